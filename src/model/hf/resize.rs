//! 8-bit RGB resampling reproduced exactly, in two flavours sharing one separable convolution
//! (horizontal pass first, rounding to u8 between passes, fixed-point weights):
//! - [`resize_rgb8`]: Pillow's `Image.resize` (weights with 22 fractional bits);
//! - [`resize_rgb8_torch`]: torch's antialiased uint8 resize on CPU (ATen `_upsample_bicubic2d_aa` /
//!   `_upsample_bilinear2d_aa`, the AVX2 and generic kernels agree), which torchvision's
//!   `resize(..., antialias=True)` and so transformers 5.x's torchvision image processors call on
//!   uint8 tensors: int16 weights with a per-axis precision, a cubic evaluated in another order.

/// The resampling filters: support radius and kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Bilinear,
    Bicubic,
}

/// The cubic's `a`, Keys' value that Pillow and torch's antialiased path use.
const CUBIC_A: f64 = -0.5;

impl Filter {
    /// From PIL's resample codes as saved in `preprocessor_config.json` (2 bilinear, 3 bicubic).
    pub fn from_pil(code: i64) -> Option<Self> {
        match code {
            2 => Some(Filter::Bilinear),
            3 => Some(Filter::Bicubic),
            _ => None,
        }
    }

    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    /// Pillow's kernels (Resample.c).
    fn eval(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                const A: f64 = CUBIC_A;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }

    /// ATen's `aa_filter` (UpSampleKernel.cpp): the same kernels, but the cubic's outer piece is
    /// `cubic_convolution2`, whose order of operations rounds differently from Pillow's.
    fn eval_torch(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bicubic if (1.0..2.0).contains(&x) => {
                const A: f64 = CUBIC_A;
                ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
            }
            _ => self.eval(x),
        }
    }
}

/// Pillow's fixed point: 32 - 8 - 2 fractional bits.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output pixel: first input index, count, and `ksize` fixed-point weights with
/// `precision` fractional bits.
struct Coeffs {
    bounds: Vec<(usize, usize)>,
    ksize: usize,
    k: Vec<i32>,
    precision: u32,
}

/// Normalized float weights over [0, in_size), Pillow's `precompute_coeffs` (ATen's
/// `_compute_indices_min_size_weights_aa` is the same loop): bounds, ksize, weights.
fn float_coeffs(in_size: usize, out_size: usize, filter: Filter, kernel: fn(Filter, f64) -> f64) -> (Vec<(usize, usize)>, usize, Vec<f64>) {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let ss = 1.0 / filterscale;
    let mut bounds = Vec::with_capacity(out_size);
    let mut w = vec![0f64; out_size * ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C's (int) cast truncates toward zero
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        // ATen clamps the count to ksize ("rare cases ... due to precision"); Pillow cannot exceed it
        let xmax = (((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin).min(ksize);
        let w = &mut w[xx * ksize..xx * ksize + xmax];
        let mut ww = 0.0;
        for (x, wx) in w.iter_mut().enumerate() {
            *wx = kernel(filter, (x as f64 + xmin as f64 - center + 0.5) * ss);
            ww += *wx;
        }
        if ww != 0.0 {
            w.iter_mut().for_each(|wx| *wx /= ww);
        }
        bounds.push((xmin, xmax));
    }
    (bounds, ksize, w)
}

/// C's `(int)(v < 0 ? v - 0.5 : v + 0.5)` of `w · 2^precision`.
fn fixed(w: &[f64], precision: u32) -> Vec<i32> {
    let one = (1u32 << precision) as f64;
    w.iter().map(|&v| if v < 0.0 { (-0.5 + v * one) as i32 } else { (0.5 + v * one) as i32 }).collect()
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`: 22 fractional bits.
fn coeffs(in_size: usize, out_size: usize, filter: Filter) -> Coeffs {
    let (bounds, ksize, w) = float_coeffs(in_size, out_size, filter, Filter::eval);
    Coeffs { bounds, ksize, k: fixed(&w, PRECISION_BITS), precision: PRECISION_BITS }
}

/// ATen's `_compute_index_ranges_int16_weights`: int16 weights, with the most fractional bits
/// (at most 22) for which the largest weight of the axis, rounded, still fits in an int16.
fn torch_coeffs(in_size: usize, out_size: usize, filter: Filter) -> Coeffs {
    let (bounds, ksize, w) = float_coeffs(in_size, out_size, filter, Filter::eval_torch);
    let w_max = w.iter().fold(0.0f64, |m, &v| m.max(v));
    let mut precision = 0u32;
    while precision < 22 && ((0.5 + w_max * (1u32 << (precision + 1)) as f64) as i32) < 1 << 15 {
        precision += 1;
    }
    // stored as int16_t
    let k = fixed(&w, precision).into_iter().map(|v| v as i16 as i32).collect();
    Coeffs { bounds, ksize, k, precision }
}

/// Separable convolution of interleaved RGB8: horizontal pass (only over the rows the vertical
/// pass reads), u8 in between, vertical pass. Sums start at one half, shift right, clamp.
fn convolve(src: &[u8], w: usize, h: usize, horiz: Option<&Coeffs>, vert: Option<&Coeffs>) -> Vec<u8> {
    let clip8 = |v: i64, precision: u32| (v >> precision).clamp(0, 255) as u8;
    // the rows the vertical pass reads
    let (y_first, y_last) = match vert {
        Some(v) => {
            let last = v.bounds[v.bounds.len() - 1];
            (v.bounds[0].0, last.0 + last.1)
        }
        None => (0, h),
    };
    let (mut img, mut iw, mut row_off) = (src.to_vec(), w, 0usize);
    if let Some(horiz) = horiz {
        let ow = horiz.bounds.len();
        let rows = y_last - y_first;
        let half = 1i64 << (horiz.precision - 1);
        let mut tmp = vec![0u8; ow * rows * 3];
        for yy in 0..rows {
            let line = &src[(yy + y_first) * w * 3..(yy + y_first + 1) * w * 3];
            for (xx, &(xmin, xmax)) in horiz.bounds.iter().enumerate() {
                let k = &horiz.k[xx * horiz.ksize..xx * horiz.ksize + xmax];
                for c in 0..3 {
                    let mut ss = half;
                    for (x, kx) in k.iter().enumerate() {
                        ss += line[(x + xmin) * 3 + c] as i64 * *kx as i64;
                    }
                    tmp[(yy * ow + xx) * 3 + c] = clip8(ss, horiz.precision);
                }
            }
        }
        img = tmp;
        iw = ow;
        row_off = y_first;
    }
    let Some(vert) = vert else { return img };
    let oh = vert.bounds.len();
    let half = 1i64 << (vert.precision - 1);
    let mut out = vec![0u8; iw * oh * 3];
    for (yy, &(ymin, ymax)) in vert.bounds.iter().enumerate() {
        let k = &vert.k[yy * vert.ksize..yy * vert.ksize + ymax];
        let ymin = ymin - row_off;
        for xx in 0..iw {
            for c in 0..3 {
                let mut ss = half;
                for (y, ky) in k.iter().enumerate() {
                    ss += img[((y + ymin) * iw + xx) * 3 + c] as i64 * *ky as i64;
                }
                out[(yy * iw + xx) * 3 + c] = clip8(ss, vert.precision);
            }
        }
    }
    out
}

/// Resizes interleaved RGB8 `src` (w × h) to (ow × oh) exactly as Pillow's `Image.resize`.
pub fn resize_rgb8(src: &[u8], w: usize, h: usize, ow: usize, oh: usize, filter: Filter) -> Vec<u8> {
    assert_eq!(src.len(), w * h * 3, "RGB8 buffer of {w}×{h}");
    let horiz = (ow != w).then(|| coeffs(w, ow, filter));
    let vert = (oh != h).then(|| coeffs(h, oh, filter));
    convolve(src, w, h, horiz.as_ref(), vert.as_ref())
}

/// Resizes interleaved RGB8 `src` (w × h) to (nw × nh) exactly as torch does on CPU for a uint8
/// tensor with `antialias=True, align_corners=False` (torchvision's
/// `resize(img, [nh, nw], interpolation=BICUBIC/BILINEAR, antialias=True)`; for bilinear,
/// torchvision takes this native uint8 path only on AVX2/AVX512/arm64 CPUs, else it resizes in
/// float32 and rounds, which this does not reproduce).
pub fn resize_rgb8_torch(src: &[u8], w: usize, h: usize, nw: usize, nh: usize, filter: Filter) -> Vec<u8> {
    assert_eq!(src.len(), w * h * 3, "RGB8 buffer of {w}×{h}");
    let horiz = (nw != w).then(|| torch_coeffs(w, nw, filter));
    let vert = (nh != h).then(|| torch_coeffs(h, nh, filter));
    convolve(src, w, h, horiz.as_ref(), vert.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_and_constant_images() {
        let src: Vec<u8> = (0..5 * 4 * 3).map(|i| (i * 7 % 256) as u8).collect();
        assert_eq!(resize_rgb8(&src, 5, 4, 5, 4, Filter::Bicubic), src);
        // a constant image stays constant at any size (weights sum to one)
        let flat = vec![77u8; 9 * 7 * 3];
        for (ow, oh) in [(4, 3), (20, 11), (9, 2), (1, 1)] {
            let out = resize_rgb8(&flat, 9, 7, ow, oh, Filter::Bicubic);
            assert!(out.iter().all(|&v| v == 77), "{ow}×{oh}");
            let out = resize_rgb8_torch(&flat, 9, 7, ow, oh, Filter::Bicubic);
            assert!(out.iter().all(|&v| v == 77), "torch {ow}×{oh}");
        }
        assert_eq!(resize_rgb8_torch(&src, 5, 4, 5, 4, Filter::Bicubic), src);
    }

    /// (differing bytes, max |difference|)
    fn diff(a: &[u8], b: &[u8]) -> (usize, u8) {
        a.iter().zip(b).fold((0, 0), |(n, m), (&x, &y)| (n + (x != y) as usize, m.max(x.abs_diff(y))))
    }

    /// Real photographs resized by torch 2.15 / torchvision 0.29 exactly as transformers 5.24's
    /// Qwen2VLImageProcessor does (tests/model/make_torch_resize_fixture.py made the fixture).
    #[test]
    fn torch_resize_matches_torchvision_on_photos() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/model/photos");
        let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("torch_resized.json")).unwrap()).unwrap();
        let want = candle_core::safetensors::load(dir.join("torch_resized.safetensors"), &candle_core::Device::Cpu).unwrap();
        let cases = meta["cases"].as_array().unwrap();
        assert!(cases.len() >= 20, "{} cases", cases.len());
        let mut bad = Vec::new();
        for case in cases {
            let get = |k: &str| case[k].as_u64().unwrap() as usize;
            let (w, h, nw, nh) = (get("w"), get("h"), get("nw"), get("nh"));
            let name = case["tensor"].as_str().unwrap();
            let filter = match case["filter"].as_str().unwrap() {
                "bicubic" => Filter::Bicubic,
                "bilinear" => Filter::Bilinear,
                f => panic!("filter {f}"),
            };
            let img = image::open(dir.join(case["source"].as_str().unwrap())).unwrap().to_rgb8();
            assert_eq!((img.width() as usize, img.height() as usize), (w, h), "{name}");
            let t = &want[name];
            assert_eq!(t.dtype(), candle_core::DType::U8, "{name}");
            assert_eq!(t.dims(), &[nh, nw, 3], "{name}");
            let expect = t.flatten_all().unwrap().to_vec1::<u8>().unwrap();
            let got = resize_rgb8_torch(img.as_raw(), w, h, nw, nh, filter);
            let (n, m) = diff(&got, &expect);
            // for information: the Pillow path against torch
            let (pn, pm) = diff(&resize_rgb8(img.as_raw(), w, h, nw, nh, filter), &expect);
            println!(
                "{name:28} {w}x{h} -> {nw}x{nh} {filter:?}: torch port {n} bytes differ; \
                 resize_rgb8 (Pillow) vs torch {pn}/{} bytes, max {pm}",
                expect.len()
            );
            if n != 0 {
                bad.push(format!("{name}: {n} of {} bytes differ, max {m}", expect.len()));
            }
        }
        assert!(bad.is_empty(), "not bit-exact:\n{}", bad.join("\n"));
    }
}
