//! Line charts of per-iteration metrics, one line per run (mean, with the spread as error
//! bars), written as SVG text or rasterized to PNG with an 8×8 bitmap font (ASCII).

use image::{Rgb, RgbImage};

/// One line: (x, mean, spread) points in x order.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64, f64)>,
}

#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub series: Vec<Series>,
}

const W: f64 = 720.0;
const H: f64 = 420.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 52.0;
const PALETTE: [[u8; 3]; 8] = [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75], [227, 119, 194], [127, 127, 127]];

/// "Nice" tick values covering [lo, hi].
fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let span = (hi - lo).max(1e-9);
    let raw = span / n as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let start = (lo / step).ceil() * step;
    (0..=n * 2).map(|i| start + i as f64 * step).take_while(|v| *v <= hi + step * 1e-6).collect()
}

fn fmt_tick(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

impl Chart {
    /// Data bounds: x over the points, y over mean ± spread, padded.
    fn bounds(&self) -> ((f64, f64), (f64, f64)) {
        let pts = self.series.iter().flat_map(|s| s.points.iter());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
        for &(x, y, e) in pts {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y - e);
            y1 = y1.max(y + e);
        }
        if !x0.is_finite() {
            return ((0.0, 1.0), (0.0, 1.0));
        }
        if x1 - x0 < 1e-9 {
            x1 = x0 + 1.0;
        }
        let pad = ((y1 - y0) * 0.1).max(0.01);
        ((x0, x1), (y0 - pad, y1 + pad))
    }

    fn map(&self) -> impl Fn(f64, f64) -> (f64, f64) {
        let ((x0, x1), (y0, y1)) = self.bounds();
        move |x, y| (LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT), TOP + (1.0 - (y - y0) / (y1 - y0)) * (H - TOP - BOTTOM))
    }

    pub fn svg(&self) -> String {
        let ((x0, x1), (y0, y1)) = self.bounds();
        let at = self.map();
        let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
        let mut o = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
            (LEFT + W - RIGHT) / 2.0,
            esc(&self.title)
        );
        for t in ticks(y0, y1, 5) {
            let (_, y) = at(x0, t);
            o += &format!(
                "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#e5e5e5\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
                W - RIGHT,
                LEFT - 6.0,
                y + 4.0,
                fmt_tick(t)
            );
        }
        for t in ticks(x0, x1, 8).into_iter().filter(|t| (t - t.round()).abs() < 1e-9) {
            let (x, _) = at(t, y0);
            o += &format!("<text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", H - BOTTOM + 18.0, fmt_tick(t));
        }
        o += &format!(
            "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"black\"/>\n<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            W - LEFT - RIGHT,
            H - TOP - BOTTOM,
            (LEFT + W - RIGHT) / 2.0,
            H - 12.0,
            esc(&self.x_label)
        );
        for (i, s) in self.series.iter().enumerate() {
            let [r, g, b] = PALETTE[i % PALETTE.len()];
            let colour = format!("rgb({r},{g},{b})");
            let pts: Vec<String> = s.points.iter().map(|&(x, y, _)| at(x, y)).map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            o += &format!("<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>\n", pts.join(" "));
            for &(x, y, e) in &s.points {
                let (px, py) = at(x, y);
                if e > 0.0 {
                    let (_, ya) = at(x, y - e);
                    let (_, yb) = at(x, y + e);
                    o += &format!("<line x1=\"{px:.1}\" y1=\"{ya:.1}\" x2=\"{px:.1}\" y2=\"{yb:.1}\" stroke=\"{colour}\"/>\n");
                }
                o += &format!("<circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"3\" fill=\"{colour}\"/>\n");
            }
            let ly = TOP + 10.0 + i as f64 * 18.0;
            o += &format!(
                "<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{colour}\" stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">{}</text>\n",
                W - RIGHT + 12.0,
                W - RIGHT + 32.0,
                W - RIGHT + 38.0,
                ly + 4.0,
                esc(&s.label)
            );
        }
        o + "</svg>\n"
    }

    pub fn png(&self) -> Vec<u8> {
        let ((x0, x1), (y0, y1)) = self.bounds();
        let at = self.map();
        let mut img = RgbImage::from_pixel(W as u32, H as u32, Rgb([255, 255, 255]));
        let grey = [229, 229, 229];
        let black = [0, 0, 0];
        for t in ticks(y0, y1, 5) {
            let (_, y) = at(x0, t);
            line(&mut img, (LEFT, y), (W - RIGHT, y), grey, 1);
            let label = fmt_tick(t);
            text(&mut img, LEFT - 6.0 - 8.0 * label.len() as f64, y - 4.0, &label, black);
        }
        for t in ticks(x0, x1, 8).into_iter().filter(|t| (t - t.round()).abs() < 1e-9) {
            let (x, _) = at(t, y0);
            let label = fmt_tick(t);
            text(&mut img, x - 4.0 * label.len() as f64, H - BOTTOM + 8.0, &label, black);
        }
        for (a, b) in [
            ((LEFT, TOP), (W - RIGHT, TOP)),
            ((W - RIGHT, TOP), (W - RIGHT, H - BOTTOM)),
            ((LEFT, H - BOTTOM), (W - RIGHT, H - BOTTOM)),
            ((LEFT, TOP), (LEFT, H - BOTTOM)),
        ] {
            line(&mut img, a, b, black, 1);
        }
        text(&mut img, (LEFT + W - RIGHT) / 2.0 - 4.0 * self.title.chars().count() as f64, 14.0, &self.title, black);
        text(&mut img, (LEFT + W - RIGHT) / 2.0 - 4.0 * self.x_label.chars().count() as f64, H - 20.0, &self.x_label, black);
        for (i, s) in self.series.iter().enumerate() {
            let c = PALETTE[i % PALETTE.len()];
            let pts: Vec<(f64, f64)> = s.points.iter().map(|&(x, y, _)| at(x, y)).collect();
            for w in pts.windows(2) {
                line(&mut img, w[0], w[1], c, 2);
            }
            for &(x, y, e) in &s.points {
                let (px, py) = at(x, y);
                if e > 0.0 {
                    line(&mut img, at(x, y - e), at(x, y + e), c, 1);
                }
                for dx in -2..=2 {
                    for dy in -2..=2 {
                        put(&mut img, px as i64 + dx, py as i64 + dy, c);
                    }
                }
            }
            let ly = TOP + 10.0 + i as f64 * 18.0;
            line(&mut img, (W - RIGHT + 12.0, ly), (W - RIGHT + 32.0, ly), c, 2);
            text(&mut img, W - RIGHT + 38.0, ly - 4.0, &s.label, black);
        }
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out).write_image_rgb(&img).expect("encoding a PNG in memory cannot fail");
        out
    }
}

trait WriteRgb {
    fn write_image_rgb(self, img: &RgbImage) -> image::ImageResult<()>;
}

impl<W: std::io::Write> WriteRgb for image::codecs::png::PngEncoder<W> {
    fn write_image_rgb(self, img: &RgbImage) -> image::ImageResult<()> {
        use image::ImageEncoder;
        self.write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgb8)
    }
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: [u8; 3]) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, Rgb(c));
    }
}

/// A straight line `width` pixels thick, sampled every half pixel.
fn line(img: &mut RgbImage, a: (f64, f64), b: (f64, f64), c: [u8; 3], width: i64) {
    let n = ((b.0 - a.0).abs().max((b.1 - a.1).abs()) * 2.0).ceil().max(1.0) as usize;
    for i in 0..=n {
        let t = i as f64 / n as f64;
        let (x, y) = (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
        for dx in 0..width {
            for dy in 0..width {
                put(img, x.round() as i64 + dx - width / 2, y.round() as i64 + dy - width / 2, c);
            }
        }
    }
}

/// Text in the 8×8 font with its top-left corner at (x, y); unknown characters print as `?`.
fn text(img: &mut RgbImage, x: f64, y: f64, s: &str, c: [u8; 3]) {
    for (i, ch) in s.chars().enumerate() {
        let glyph = font8x8::legacy::BASIC_LEGACY[if ch.is_ascii() { ch as usize } else { '?' as usize }];
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits >> col & 1 == 1 {
                    put(img, x as i64 + i as i64 * 8 + col, y as i64 + row as i64, c);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart() -> Chart {
        Chart {
            title: "test greedy accuracy".into(),
            x_label: "iteration".into(),
            series: vec![
                Series { label: "mstar".into(), points: vec![(0.0, 0.2, 0.0), (1.0, 0.3, 0.02), (2.0, 0.35, 0.01)] },
                Series { label: "rest_em".into(), points: vec![(0.0, 0.2, 0.0), (1.0, 0.25, 0.0), (2.0, 0.27, 0.0)] },
            ],
        }
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 1.0, 5), vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]);
        assert_eq!(ticks(0.17, 0.38, 5).first().copied(), Some(0.2));
    }

    #[test]
    fn svg_has_a_line_and_a_legend_entry_per_series() {
        let s = chart().svg();
        assert_eq!(s.matches("<polyline").count(), 2);
        assert!(s.contains(">mstar</text>") && s.contains(">rest_em</text>") && s.contains(">test greedy accuracy</text>"));
        assert_eq!(s.matches("<circle").count(), 6);
    }

    #[test]
    fn png_decodes_and_shows_the_series_colours() {
        let png = chart().png();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!((img.width(), img.height()), (W as u32, H as u32));
        for c in &PALETTE[..2] {
            assert!(img.pixels().filter(|p| p.0 == *c).count() > 50, "colour {c:?} missing");
        }
    }
}
