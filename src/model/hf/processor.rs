//! The Qwen-VL image processor in both of transformers' backends (Pillow, torchvision): smart
//! resize to patch multiples within min/max pixels, rescale, normalize, temporal and spatial patching.

use super::resize::{resize_rgb8, resize_rgb8_torch, Filter};
use super::{invalid, read_json, HfError, Result};
use std::path::Path;

/// Which of transformers' image processors a folder names, i.e. whose resize and arithmetic to
/// reproduce. The same class name meant Pillow in transformers 4.x and torchvision in 5.x.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `Qwen2VLImageProcessor` of 4.x, `Qwen2VLImageProcessorPil` of 5.x: Pillow's fixed-point
    /// resize, rescale then normalize in numpy's order.
    Pil,
    /// `Qwen2VLImageProcessorFast` of 4.x, `Qwen2VLImageProcessor` of 5.x: torch's uint8
    /// antialiased resize, rescale fused into normalize (as `TorchvisionBackend` does).
    Torchvision,
}

/// The image processor settings of a Qwen-VL checkpoint (`preprocessor_config.json`, or the
/// `image_processor` object of transformers 5's `processor_config.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessor {
    pub backend: Backend,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub merge_size: usize,
    pub min_pixels: usize,
    pub max_pixels: usize,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    pub rescale_factor: f64,
    pub do_resize: bool,
    pub do_rescale: bool,
    pub do_normalize: bool,
    pub resample: Filter,
}

impl Default for ImageProcessor {
    /// transformers' defaults for `Qwen2VLImageProcessor`.
    fn default() -> Self {
        Self {
            backend: Backend::Pil,
            patch_size: 14,
            temporal_patch_size: 2,
            merge_size: 2,
            min_pixels: 56 * 56,
            max_pixels: 28 * 28 * 1280,
            image_mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
            image_std: [0.268_629_54, 0.261_302_6, 0.275_777_1],
            rescale_factor: 1.0 / 255.0,
            do_resize: true,
            do_rescale: true,
            do_normalize: true,
            resample: Filter::Bicubic,
        }
    }
}

/// One image as the vision tower's input: `(t·h·w) × (3·temporal·patch²)` values, rows ordered
/// (t, h-block, w-block, h-in-block, w-in-block), columns (channel, frame, y, x).
#[derive(Debug, Clone, PartialEq)]
pub struct Pixels {
    pub values: Vec<f32>,
    /// (t, h, w) in patches.
    pub grid: [usize; 3],
}

impl Pixels {
    pub fn num_patches(&self) -> usize {
        self.grid.iter().product()
    }
}

/// An image [`smart_resize`] cannot size, in transformers' words.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResizeError {
    #[error("empty image ({width}×{height})")]
    Empty { width: usize, height: usize },
    #[error("absolute aspect ratio must be smaller than 200, got {0}")]
    AspectRatio(f64),
}

/// transformers' `smart_resize`: (height, width) rounded to multiples of `factor` (Python's
/// round-half-to-even), then scaled into [min_pixels, max_pixels] keeping the aspect ratio.
pub fn smart_resize(height: usize, width: usize, factor: usize, min_pixels: usize, max_pixels: usize) -> std::result::Result<(usize, usize), ResizeError> {
    if height == 0 || width == 0 {
        return Err(ResizeError::Empty { width, height });
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    if h.max(w) / h.min(w) > 200.0 {
        return Err(ResizeError::AspectRatio(h.max(w) / h.min(w)));
    }
    let mut hb = (h / f).round_ties_even() * f;
    let mut wb = (w / f).round_ties_even() * f;
    if hb * wb > max_pixels as f64 {
        let beta = ((h * w) / max_pixels as f64).sqrt();
        hb = f.max((h / beta / f).floor() * f);
        wb = f.max((w / beta / f).floor() * f);
    } else if hb * wb < min_pixels as f64 {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        hb = (h * beta / f).ceil() * f;
        wb = (w * beta / f).ceil() * f;
    }
    Ok((hb as usize, wb as usize))
}

impl ImageProcessor {
    /// The folder's image processor: `preprocessor_config.json` (transformers ≤ 4.x, and 5.x
    /// folders that kept it), else `processor_config.json`'s `image_processor` (5.x). The
    /// backend follows the class name as the transformers that wrote the folder meant it.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let pre = dir.join("preprocessor_config.json");
        let proc = dir.join("processor_config.json");
        // transformers_version of config.json: which generation of class names the folder speaks
        let v5 = read_json(&dir.join("config.json"))
            .ok()
            .and_then(|c| c.get("transformers_version")?.as_str().map(|v| v.split('.').next().unwrap_or("0").parse::<u32>().unwrap_or(0) >= 5))
            .unwrap_or(false);
        if pre.exists() {
            Self::from_value(&read_json(&pre)?, &pre, v5)
        } else if proc.exists() {
            let v = read_json(&proc)?;
            let ip = v.get("image_processor").filter(|x| x.is_object()).ok_or_else(|| invalid(&proc, "no `image_processor` object"))?;
            Self::from_value(ip, &proc, true)
        } else {
            Err(invalid(dir, "no image processor settings (preprocessor_config.json or processor_config.json)"))
        }
    }

    /// Reads `preprocessor_config.json` (kept for callers with a file).
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_value(&read_json(path)?, path, false)
    }

    /// Reads the settings; `min_pixels` / `max_pixels` override `size` as in transformers.
    /// Unknown keys are ignored; a key of the wrong type is an error. `v5`: the folder was
    /// written by transformers 5 (a plain `Qwen2VLImageProcessor` is then torchvision's).
    pub fn from_value(v: &serde_json::Value, path: &Path, v5: bool) -> Result<Self> {
        let backend = match v.get("image_processor_type").and_then(|t| t.as_str()) {
            Some("Qwen2VLImageProcessorFast") => Backend::Torchvision,
            Some("Qwen2VLImageProcessorPil") => Backend::Pil,
            Some("Qwen2VLImageProcessor") | None => {
                if v5 {
                    Backend::Torchvision
                } else {
                    Backend::Pil
                }
            }
            Some(other) => {
                return Err(invalid(
                    path,
                    format!("`image_processor_type` {other} is not supported (Qwen2VLImageProcessor, Qwen2VLImageProcessorFast, Qwen2VLImageProcessorPil are)"),
                ));
            }
        };
        let mut p = ImageProcessor { backend, ..ImageProcessor::default() };
        let uint = |key: &str, into: &mut usize| -> Result<()> {
            if let Some(x) = v.get(key).filter(|x| !x.is_null()) {
                *into = x.as_u64().ok_or_else(|| invalid(path, format!("`{key}` must be a positive integer, got {x}")))? as usize;
            }
            Ok(())
        };
        uint("patch_size", &mut p.patch_size)?;
        uint("temporal_patch_size", &mut p.temporal_patch_size)?;
        uint("merge_size", &mut p.merge_size)?;
        if let Some(size) = v.get("size").filter(|x| !x.is_null()) {
            let edge = |k: &str| size.get(k).and_then(|x| x.as_u64()).map(|x| x as usize);
            match (edge("shortest_edge"), edge("longest_edge")) {
                (Some(a), Some(b)) => (p.min_pixels, p.max_pixels) = (a, b),
                _ => return Err(invalid(path, "`size` must have integer `shortest_edge` and `longest_edge` (pixel counts)")),
            }
        }
        uint("min_pixels", &mut p.min_pixels)?;
        uint("max_pixels", &mut p.max_pixels)?;
        let triple = |key: &str, into: &mut [f32; 3]| -> Result<()> {
            if let Some(x) = v.get(key).filter(|x| !x.is_null()) {
                let vals: Vec<f64> = x.as_array().map(|a| a.iter().filter_map(|e| e.as_f64()).collect()).unwrap_or_default();
                match vals.len() {
                    3 => *into = [vals[0] as f32, vals[1] as f32, vals[2] as f32],
                    1 => *into = [vals[0] as f32; 3],
                    _ => return Err(invalid(path, format!("`{key}` must be 3 numbers, got {x}"))),
                }
            }
            Ok(())
        };
        triple("image_mean", &mut p.image_mean)?;
        triple("image_std", &mut p.image_std)?;
        if let Some(x) = v.get("rescale_factor") {
            p.rescale_factor = x.as_f64().ok_or_else(|| invalid(path, format!("`rescale_factor` must be a number, got {x}")))?;
        }
        for (key, into) in [("do_resize", &mut p.do_resize), ("do_rescale", &mut p.do_rescale), ("do_normalize", &mut p.do_normalize)] {
            if let Some(x) = v.get(key) {
                *into = x.as_bool().ok_or_else(|| invalid(path, format!("`{key}` must be true or false, got {x}")))?;
            }
        }
        if let Some(x) = v.get("resample") {
            p.resample = x
                .as_i64()
                .and_then(Filter::from_pil)
                .ok_or_else(|| invalid(path, format!("`resample` {x} is not supported (2 = bilinear and 3 = bicubic are)")))?;
        }
        if p.patch_size == 0 || p.merge_size == 0 || p.temporal_patch_size == 0 || p.min_pixels > p.max_pixels {
            return Err(invalid(path, "patch_size, merge_size and temporal_patch_size must be > 0 and min_pixels ≤ max_pixels"));
        }
        Ok(p)
    }

    /// Encoded image bytes (PNG, JPEG, WebP, …) → patches. PNG input reproduces transformers
    /// bit for bit; JPEG decoders may differ from libjpeg by a grey level here and there.
    pub fn preprocess_bytes(&self, bytes: &[u8]) -> Result<Pixels> {
        let img = image::load_from_memory(bytes).map_err(|e| HfError::Image(format!("undecodable image: {e}")))?;
        // PIL's convert("RGB"): grey replicated, alpha dropped
        let rgb = img.to_rgb8();
        let (w, h) = (rgb.width() as usize, rgb.height() as usize);
        self.preprocess_rgb8(rgb.as_raw(), w, h)
    }

    /// Interleaved RGB8 pixels (w × h) → patches.
    pub fn preprocess_rgb8(&self, rgb: &[u8], w: usize, h: usize) -> Result<Pixels> {
        let factor = self.patch_size * self.merge_size;
        let (rh, rw) =
            if self.do_resize { smart_resize(h, w, factor, self.min_pixels, self.max_pixels).map_err(|e| HfError::Image(e.to_string()))? } else { (h, w) };
        if rh % factor != 0 || rw % factor != 0 {
            return Err(HfError::Image(format!("a {w}×{h} image is not a multiple of {factor} pixels and do_resize is off")));
        }
        let plane: Vec<f32> = match self.backend {
            Backend::Pil => {
                let px = resize_rgb8(rgb, w, h, rw, rh, self.resample);
                // rescale in f64 then to f32, normalize in f32: numpy's order of operations
                px.iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        let mut x = if self.do_rescale { (v as f64 * self.rescale_factor) as f32 } else { v as f32 };
                        if self.do_normalize {
                            let c = i % 3;
                            x = (x - self.image_mean[c]) / self.image_std[c];
                        }
                        x
                    })
                    .collect()
            }
            Backend::Torchvision => {
                let px = if (rw, rh) == (w, h) { rgb.to_vec() } else { resize_rgb8_torch(rgb, w, h, rw, rh, self.resample) };
                // TorchvisionBackend.rescale_and_normalize: with both, mean and std are scaled by
                // 1 / rescale_factor in f32 and the u8 values normalized by them; else each alone
                let (mut mean, mut std) = (self.image_mean, self.image_std);
                let fused = self.do_rescale && self.do_normalize;
                if fused {
                    let k = (1.0 / self.rescale_factor) as f32;
                    for c in 0..3 {
                        mean[c] *= k;
                        std[c] *= k;
                    }
                }
                let scale = self.rescale_factor as f32;
                px.iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        let c = i % 3;
                        if self.do_normalize {
                            (v as f32 - mean[c]) / std[c]
                        } else if self.do_rescale {
                            v as f32 * scale
                        } else {
                            v as f32
                        }
                    })
                    .collect()
            }
        };
        let (ps, ms, tps) = (self.patch_size, self.merge_size, self.temporal_patch_size);
        let (gh, gw) = (rh / ps, rw / ps);
        let row = 3 * tps * ps * ps;
        let mut values = Vec::with_capacity(gh * gw * row);
        for bh in 0..gh / ms {
            for bw in 0..gw / ms {
                for mh in 0..ms {
                    for mw in 0..ms {
                        let (y0, x0) = ((bh * ms + mh) * ps, (bw * ms + mw) * ps);
                        for c in 0..3 {
                            // one image is repeated over the temporal patch
                            for _ in 0..tps {
                                for y in 0..ps {
                                    for x in 0..ps {
                                        values.push(plane[((y0 + y) * rw + x0 + x) * 3 + c]);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(Pixels { values, grid: [1, gh, gw] })
    }

    /// How many `<|image_pad|>` tokens an image of this grid becomes.
    pub fn num_tokens(&self, grid: [usize; 3]) -> usize {
        grid.iter().product::<usize>() / (self.merge_size * self.merge_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backend_is_the_class_as_its_transformers_meant_it() {
        let path = Path::new("m/preprocessor_config.json");
        let backend = |name: Option<&str>, v5: bool| {
            let v = match name {
                Some(n) => serde_json::json!({"image_processor_type": n}),
                None => serde_json::json!({}),
            };
            ImageProcessor::from_value(&v, path, v5).map(|p| p.backend)
        };
        // 4.x: the plain name is Pillow's, Fast is torchvision's; 5.x: the plain name is torchvision's, Pil is Pillow's
        assert_eq!(backend(Some("Qwen2VLImageProcessor"), false).unwrap(), Backend::Pil);
        assert_eq!(backend(Some("Qwen2VLImageProcessorFast"), false).unwrap(), Backend::Torchvision);
        assert_eq!(backend(Some("Qwen2VLImageProcessor"), true).unwrap(), Backend::Torchvision);
        assert_eq!(backend(Some("Qwen2VLImageProcessorPil"), true).unwrap(), Backend::Pil);
        assert_eq!(backend(None, true).unwrap(), Backend::Torchvision);
        let err = backend(Some("SiglipImageProcessor"), true).unwrap_err().to_string();
        assert!(err.contains("m/preprocessor_config.json") && err.contains("image_processor_type"), "{err}");
    }

    #[test]
    fn smart_resize_like_transformers() {
        // values computed with transformers 4.57 smart_resize
        assert_eq!(smart_resize(56, 84, 28, 3136, 7056).unwrap(), (56, 84));
        assert_eq!(smart_resize(110, 150, 28, 3136, 7056).unwrap(), (56, 84));
        assert_eq!(smart_resize(30, 40, 28, 3136, 7056).unwrap(), (56, 84));
        // 70/28 = 2.5 rounds to even
        assert_eq!(smart_resize(70, 100, 28, 56 * 56, 28 * 28 * 1280).unwrap(), (56, 112));
        assert_eq!(smart_resize(1, 300, 28, 3136, 7056), Err(ResizeError::AspectRatio(300.0)));
        assert_eq!(smart_resize(1, 300, 28, 3136, 7056).unwrap_err().to_string(), "absolute aspect ratio must be smaller than 200, got 300");
        assert_eq!(smart_resize(0, 5, 28, 3136, 7056).unwrap_err().to_string(), "empty image (5×0)");
    }
}
