//! The tiny vision-language model (1M–20M parameters by config): ViT-style patch encoder,
//! projector, causal decoder with RoPE, RMSNorm and SwiGLU; trainable end to end in candle.

pub mod config;
pub mod decode_cpu;
pub mod kernels;
pub mod model;
pub mod train_cpu;
pub mod vision_cpu;

pub use config::{Config, VisionConfig};
pub use model::{KvCache, TinyVlm};

/// An image as model input: RGB resized to `image_size`, scaled to [-1, 1], cut into
/// row-major patches, each flattened as (row, column, channel). Length P × patch_dim.
pub fn image_patches(bytes: &[u8], v: &VisionConfig) -> Result<Vec<f32>, String> {
    let img = image::load_from_memory(bytes).map_err(|e| format!("undecodable image: {e}"))?;
    let s = v.image_size as u32;
    let img = if img.width() == s && img.height() == s { img } else { img.resize_exact(s, s, image::imageops::FilterType::Triangle) };
    let rgb = img.to_rgb8();
    let (p, n) = (v.patch_size, v.image_size / v.patch_size);
    let mut out = Vec::with_capacity(v.num_patches() * v.patch_dim());
    for py in 0..n {
        for px in 0..n {
            for y in 0..p {
                for x in 0..p {
                    let pixel = rgb.get_pixel((px * p + x) as u32, (py * p + y) as u32);
                    out.extend(pixel.0.iter().map(|c| (*c as f32 / 255.0 - 0.5) / 0.5));
                }
            }
        }
    }
    Ok(out)
}
