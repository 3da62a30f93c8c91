//! Pillow's resampling of 8-bit RGB images, reproduced exactly (separable convolution with
//! fixed-point coefficients, horizontal pass first, rounding to u8 between passes).

/// Pillow's filters: support radius and kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Bilinear,
    Bicubic,
}

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
                const A: f64 = -0.5;
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
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output pixel: first input index, count, and `ksize` fixed-point weights.
struct Coeffs {
    bounds: Vec<(usize, usize)>,
    ksize: usize,
    k: Vec<i32>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the box [0, in_size).
fn coeffs(in_size: usize, out_size: usize, filter: Filter) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut k = vec![0i32; out_size * ksize];
    let mut w = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) cast truncates toward zero
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut ww = 0.0;
        for (x, wx) in w.iter_mut().enumerate().take(xmax) {
            *wx = filter.eval((x as f64 + xmin as f64 - center + 0.5) * ss);
            ww += *wx;
        }
        for x in 0..xmax {
            let v = if ww != 0.0 { w[x] / ww } else { w[x] };
            let f = v * (1u32 << PRECISION_BITS) as f64;
            k[xx * ksize + x] = if v < 0.0 { (-0.5 + f) as i32 } else { (0.5 + f) as i32 };
        }
        bounds.push((xmin, xmax));
    }
    Coeffs { bounds, ksize, k }
}

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes interleaved RGB8 `src` (w × h) to (ow × oh) exactly as Pillow's `Image.resize`.
pub fn resize_rgb8(src: &[u8], w: usize, h: usize, ow: usize, oh: usize, filter: Filter) -> Vec<u8> {
    assert_eq!(src.len(), w * h * 3, "RGB8 buffer of {w}×{h}");
    if w == ow && h == oh {
        return src.to_vec();
    }
    let horiz = coeffs(w, ow, filter);
    let vert = coeffs(h, oh, filter);
    let half = 1i64 << (PRECISION_BITS - 1);
    // the rows the vertical pass reads
    let (y_first, y_last) = (vert.bounds[0].0, vert.bounds[oh - 1].0 + vert.bounds[oh - 1].1);
    let (mut img, mut iw, mut row_off) = (src.to_vec(), w, 0usize);
    if ow != w {
        let rows = y_last - y_first;
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
                    tmp[(yy * ow + xx) * 3 + c] = clip8(ss);
                }
            }
        }
        img = tmp;
        iw = ow;
        row_off = y_first;
    }
    if oh == h {
        return img;
    }
    let mut out = vec![0u8; ow * oh * 3];
    for (yy, &(ymin, ymax)) in vert.bounds.iter().enumerate() {
        let k = &vert.k[yy * vert.ksize..yy * vert.ksize + ymax];
        let ymin = ymin - row_off;
        for xx in 0..iw {
            for c in 0..3 {
                let mut ss = half;
                for (y, ky) in k.iter().enumerate() {
                    ss += img[((y + ymin) * iw + xx) * 3 + c] as i64 * *ky as i64;
                }
                out[(yy * iw + xx) * 3 + c] = clip8(ss);
            }
        }
    }
    out
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
        }
    }
}
