//! Line charts of per-iteration metrics, one line per run (the mean, with an interval as error
//! bars), or steps for a value that is constant within an iteration; written as SVG text or
//! rasterized to PNG with an 8×8 bitmap font (ASCII).

use image::{Rgb, RgbImage};

/// A point: x, y and the interval drawn as an error bar (None: no bar).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub interval: Option<(f64, f64)>,
}

/// One line: points in x order; `step`: drawn as steps, each y held over [x − ½, x + ½].
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<Point>,
    pub step: bool,
}

#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    /// A second, smaller line under the title (n, what the error bars are).
    pub subtitle: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

const W: f64 = 720.0;
const H: f64 = 420.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 52.0;
const BOTTOM: f64 = 52.0;
/// Half the width of an error bar's caps, in pixels.
const CAP: f64 = 4.0;
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

impl Series {
    /// The vertices of the line: the points, or for steps each point's level from x − ½ to
    /// x + ½ (consecutive iterations meet in a vertical jump).
    pub fn path(&self) -> Vec<(f64, f64)> {
        if self.step {
            self.points.iter().flat_map(|p| [(p.x - 0.5, p.y), (p.x + 0.5, p.y)]).collect()
        } else {
            self.points.iter().map(|p| (p.x, p.y)).collect()
        }
    }
}

impl Chart {
    /// Data bounds: x over the lines, y over the points and their intervals, padded.
    fn bounds(&self) -> ((f64, f64), (f64, f64)) {
        let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
        for s in &self.series {
            for (x, _) in s.path() {
                x0 = x0.min(x);
                x1 = x1.max(x);
            }
            for p in &s.points {
                let (lo, hi) = p.interval.unwrap_or((p.y, p.y));
                y0 = y0.min(p.y.min(lo));
                y1 = y1.max(p.y.max(hi));
            }
        }
        if !x0.is_finite() {
            return ((0.0, 1.0), (0.0, 1.0));
        }
        if x1 - x0 < 1e-9 {
            x1 = x0 + 1.0;
        }
        // room for the first and last points' markers and error bars (steps end there anyway)
        if !self.series.iter().any(|s| s.step) {
            let xpad = (x1 - x0) * 0.04;
            (x0, x1) = (x0 - xpad, x1 + xpad);
        }
        let pad = ((y1 - y0) * 0.1).max(0.01 * y1.abs().max(1.0));
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
        let mid = (LEFT + W - RIGHT) / 2.0;
        let mut o = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{mid}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
            esc(&self.title)
        );
        if !self.subtitle.is_empty() {
            o += &format!("<text x=\"{mid}\" y=\"40\" text-anchor=\"middle\" font-size=\"11\" fill=\"#555\">{}</text>\n", esc(&self.subtitle));
        }
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
        let ymid = (TOP + H - BOTTOM) / 2.0;
        o += &format!(
            "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"black\"/>\n<text x=\"{mid}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n<text x=\"18\" y=\"{ymid}\" text-anchor=\"middle\" transform=\"rotate(-90 18 {ymid})\">{}</text>\n",
            W - LEFT - RIGHT,
            H - TOP - BOTTOM,
            H - 12.0,
            esc(&self.x_label),
            esc(&self.y_label)
        );
        for (i, s) in self.series.iter().enumerate() {
            let [r, g, b] = PALETTE[i % PALETTE.len()];
            let colour = format!("rgb({r},{g},{b})");
            let pts: Vec<String> = s.path().into_iter().map(|(x, y)| at(x, y)).map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            o += &format!("<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>\n", pts.join(" "));
            for p in &s.points {
                let (px, py) = at(p.x, p.y);
                if let Some((lo, hi)) = p.interval {
                    let (_, ya) = at(p.x, lo);
                    let (_, yb) = at(p.x, hi);
                    o += &format!(
                        "<path class=\"error-bar\" d=\"M{px:.1},{ya:.1}V{yb:.1}M{:.1},{ya:.1}H{:.1}M{:.1},{yb:.1}H{:.1}\" stroke=\"{colour}\" fill=\"none\"/>\n",
                        px - CAP,
                        px + CAP,
                        px - CAP,
                        px + CAP
                    );
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
        let mid = (LEFT + W - RIGHT) / 2.0;
        text(&mut img, mid - 4.0 * self.title.chars().count() as f64, 10.0, &self.title, black);
        text(&mut img, mid - 4.0 * self.subtitle.chars().count() as f64, 28.0, &self.subtitle, [85, 85, 85]);
        text(&mut img, mid - 4.0 * self.x_label.chars().count() as f64, H - 20.0, &self.x_label, black);
        text_up(&mut img, 12.0, (TOP + H - BOTTOM) / 2.0 + 4.0 * self.y_label.chars().count() as f64, &self.y_label, black);
        for (i, s) in self.series.iter().enumerate() {
            let c = PALETTE[i % PALETTE.len()];
            let pts: Vec<(f64, f64)> = s.path().into_iter().map(|(x, y)| at(x, y)).collect();
            for w in pts.windows(2) {
                line(&mut img, w[0], w[1], c, 2);
            }
            for p in &s.points {
                let (px, py) = at(p.x, p.y);
                if let Some((lo, hi)) = p.interval {
                    let ((_, ya), (_, yb)) = (at(p.x, lo), at(p.x, hi));
                    line(&mut img, (px, ya), (px, yb), c, 1);
                    line(&mut img, (px - CAP, ya), (px + CAP, ya), c, 1);
                    line(&mut img, (px - CAP, yb), (px + CAP, yb), c, 1);
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

/// The 8×8 font's glyph of a character: ASCII, dashes and the middle dot as their nearest
/// ASCII, anything else as `?`.
fn glyph(ch: char) -> [u8; 8] {
    let ch = match ch {
        '–' | '—' | '−' => '-',
        '·' => '|',
        c if c.is_ascii() => c,
        _ => '?',
    };
    font8x8::legacy::BASIC_LEGACY[ch as usize]
}

/// Text in the 8×8 font with its top-left corner at (x, y).
fn text(img: &mut RgbImage, x: f64, y: f64, s: &str, c: [u8; 3]) {
    for (i, ch) in s.chars().enumerate() {
        let glyph = glyph(ch);
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits >> col & 1 == 1 {
                    put(img, x as i64 + i as i64 * 8 + col, y as i64 + row as i64, c);
                }
            }
        }
    }
}

/// Text in the 8×8 font turned a quarter left (read bottom to top), starting at (x, y), its
/// lower-left corner.
fn text_up(img: &mut RgbImage, x: f64, y: f64, s: &str, c: [u8; 3]) {
    for (i, ch) in s.chars().enumerate() {
        let glyph = glyph(ch);
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits >> col & 1 == 1 {
                    // (col, row) of the upright glyph → (row, −col) turned left
                    put(img, x as i64 + row as i64, y as i64 - i as i64 * 8 - col, c);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(x: f64, y: f64, e: f64) -> Point {
        Point { x, y, interval: (e > 0.0).then_some((y - e, y + e)) }
    }

    fn chart() -> Chart {
        Chart {
            title: "test greedy accuracy".into(),
            subtitle: "n = 300 prompts".into(),
            x_label: "iteration".into(),
            y_label: "accuracy (%)".into(),
            series: vec![
                Series { label: "mstar".into(), points: vec![pt(0.0, 20.0, 0.0), pt(1.0, 30.0, 2.0), pt(2.0, 35.0, 1.0)], step: false },
                Series { label: "rest_em".into(), points: vec![pt(0.0, 20.0, 0.0), pt(1.0, 25.0, 0.0), pt(2.0, 27.0, 0.0)], step: false },
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
    fn svg_has_the_axis_labels_the_subtitle_and_an_error_bar_per_interval() {
        let s = chart().svg();
        assert!(s.contains("rotate(-90") && s.contains(">accuracy (%)</text>"), "{s}");
        assert!(s.contains(">n = 300 prompts</text>"), "{s}");
        assert_eq!(s.matches("class=\"error-bar\"").count(), 2, "{s}");
        // the bar spans the interval: 28..32 at x = 1
        let at = chart().map();
        let (_, lo) = at(1.0, 28.0);
        let (_, hi) = at(1.0, 32.0);
        assert!(s.contains(&format!("V{hi:.1}")) && s.contains(&format!(",{lo:.1}V")), "{s}");
    }

    #[test]
    fn a_step_series_is_level_within_an_iteration_and_jumps_between() {
        let s = Series { label: "t".into(), points: vec![pt(1.0, 0.9, 0.0), pt(2.0, 0.9, 0.0), pt(3.0, 0.7, 0.0)], step: true };
        let path = s.path();
        assert_eq!(path, vec![(0.5, 0.9), (1.5, 0.9), (1.5, 0.9), (2.5, 0.9), (2.5, 0.7), (3.5, 0.7)]);
        // every segment is horizontal or vertical
        assert!(path.windows(2).all(|w| w[0].0 == w[1].0 || w[0].1 == w[1].1));
        let c = Chart { title: "T".into(), subtitle: String::new(), x_label: "iteration".into(), y_label: "temperature".into(), series: vec![s] };
        assert_eq!(c.bounds().0, (0.5, 3.5));
        assert!(c.svg().contains("<polyline"));
    }

    #[test]
    fn png_decodes_and_shows_the_series_colours() {
        let png = chart().png();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!((img.width(), img.height()), (W as u32, H as u32));
        for c in &PALETTE[..2] {
            assert!(img.pixels().filter(|p| p.0 == *c).count() > 50, "colour {c:?} missing");
        }
        // the y label, turned: black pixels left of the tick labels
        assert!((0..20).any(|x| (60..360).any(|y| img.get_pixel(x, y).0 == [0, 0, 0])));
    }
}
