//! The Qwen2-VL / Qwen2.5-VL image processor (`Qwen2VLImageProcessor`, the PIL one): smart
//! resize to patch multiples within min/max pixels, rescale, normalize, temporal and spatial patching.

use super::resize::{resize_rgb8, Filter};
use super::{invalid, read_json, HfError, Result};
use std::path::Path;

/// `preprocessor_config.json` of a Qwen-VL checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessor {
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

/// transformers' `smart_resize`: (height, width) rounded to multiples of `factor` (Python's
/// round-half-to-even), then scaled into [min_pixels, max_pixels] keeping the aspect ratio.
pub fn smart_resize(height: usize, width: usize, factor: usize, min_pixels: usize, max_pixels: usize) -> std::result::Result<(usize, usize), String> {
    if height == 0 || width == 0 {
        return Err(format!("empty image ({width}×{height})"));
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    if h.max(w) / h.min(w) > 200.0 {
        return Err(format!("absolute aspect ratio must be smaller than 200, got {}", h.max(w) / h.min(w)));
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
    /// Reads `preprocessor_config.json`; `min_pixels` / `max_pixels` override `size` as in
    /// transformers. Unknown keys are ignored; a key of the wrong type is an error.
    pub fn from_file(path: &Path) -> Result<Self> {
        let v = read_json(path)?;
        let mut p = ImageProcessor::default();
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
            p.resample = x.as_i64().and_then(Filter::from_pil).ok_or_else(|| {
                invalid(path, format!("`resample` {x} is not supported (2 = bilinear and 3 = bicubic are)"))
            })?;
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
        let (rh, rw) = if self.do_resize {
            smart_resize(h, w, factor, self.min_pixels, self.max_pixels).map_err(HfError::Image)?
        } else {
            (h, w)
        };
        if rh % factor != 0 || rw % factor != 0 {
            return Err(HfError::Image(format!("a {w}×{h} image is not a multiple of {factor} pixels and do_resize is off")));
        }
        let px = resize_rgb8(rgb, w, h, rw, rh, self.resample);
        // rescale in f64 then to f32, normalize in f32: numpy's order of operations
        let plane: Vec<f32> = px
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let mut x = if self.do_rescale { (v as f64 * self.rescale_factor) as f32 } else { v as f32 };
                if self.do_normalize {
                    let c = i % 3;
                    x = (x - self.image_mean[c]) / self.image_std[c];
                }
                x
            })
            .collect();
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
    fn smart_resize_like_transformers() {
        // values computed with transformers 4.57 smart_resize
        assert_eq!(smart_resize(56, 84, 28, 3136, 7056).unwrap(), (56, 84));
        assert_eq!(smart_resize(110, 150, 28, 3136, 7056).unwrap(), (56, 84));
        assert_eq!(smart_resize(30, 40, 28, 3136, 7056).unwrap(), (56, 84));
        // 70/28 = 2.5 rounds to even
        assert_eq!(smart_resize(70, 100, 28, 56 * 56, 28 * 28 * 1280).unwrap(), (56, 112));
        assert!(smart_resize(1, 300, 28, 3136, 7056).unwrap_err().contains("aspect ratio"));
    }
}
