//! Scene model for the synthetic task: digit-bearing shapes of four colours on a jittered 3×3 grid.
//! Sampling uses the crate-local RNG; rendering is integer-only and PNG-encoded deterministically.

use image::{ImageEncoder, Rgb, RgbImage};
use serde::{Deserialize, Serialize};

use super::font;
use super::rng::Rng;

/// Image width and height in pixels.
pub const SIZE: u32 = 56;
/// Grid is GRID×GRID cells of CELL px starting at ORIGIN; objects keep MARGIN px from cell edges.
pub const GRID: u32 = 3;
pub const CELL: i32 = 18;
pub const ORIGIN: i32 = 1;
pub const MARGIN: i32 = 1;
pub const BACKGROUND: [u8; 3] = [222, 222, 222];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Circle,
    Square,
    Triangle,
}

impl Shape {
    pub const ALL: [Shape; 3] = [Shape::Circle, Shape::Square, Shape::Triangle];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
        }
    }

    pub fn parse(s: &str) -> Option<Shape> {
        Shape::ALL.into_iter().find(|x| x.name() == s)
    }

    /// Bounding box (w, h) in pixels; chosen so all three look about equally large.
    pub fn size(self) -> (i32, i32) {
        match self {
            Shape::Circle => (13, 13),
            Shape::Square => (12, 12),
            Shape::Triangle => (15, 15),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    Red,
    Green,
    Blue,
    Yellow,
}

impl Colour {
    pub const ALL: [Colour; 4] = [Colour::Red, Colour::Green, Colour::Blue, Colour::Yellow];

    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
        }
    }

    pub fn parse(s: &str) -> Option<Colour> {
        Colour::ALL.into_iter().find(|x| x.name() == s)
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// Fill colour (saturated, clearly distinct hues).
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 30, 30],
            Colour::Green => [20, 150, 40],
            Colour::Blue => [30, 70, 230],
            Colour::Yellow => [250, 205, 0],
        }
    }

    /// Digit colour: white on dark fills, black on light ones.
    pub fn ink(self) -> [u8; 3] {
        let [r, g, b] = self.rgb();
        let luma = 299 * u32::from(r) + 587 * u32::from(g) + 114 * u32::from(b);
        if luma > 140_000 {
            [0, 0, 0]
        } else {
            [255, 255, 255]
        }
    }
}

/// One object; `x, y, w, h` is its bounding box, `row, col` its grid cell.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Object {
    pub shape: Shape,
    pub colour: Colour,
    pub digit: u8,
    pub row: u32,
    pub col: u32,
    pub x: i32,
    pub y: i32,
    pub w: i32,
    pub h: i32,
}

impl Object {
    /// Whether image pixel (px, py) is covered by the shape (integer geometry, pixel centres).
    pub fn contains(&self, px: i32, py: i32) -> bool {
        let (i, j) = (px - self.x, py - self.y);
        if i < 0 || j < 0 || i >= self.w || j >= self.h {
            return false;
        }
        match self.shape {
            Shape::Square => true,
            Shape::Circle => {
                let (dx, dy) = (2 * i + 1 - self.w, 2 * j + 1 - self.h);
                dx * dx + dy * dy <= self.w * self.h
            }
            // apex at top centre, base along the bottom row
            Shape::Triangle => (2 * i + 1 - self.w).abs() * self.h * 2 <= self.w * (2 * j + 1),
        }
    }

    /// Top-left pixel of the digit glyph (centred; low in the triangle where it is wide).
    pub fn glyph_origin(&self) -> (i32, i32) {
        let gx = self.x + (self.w - font::GLYPH_W) / 2;
        let gy = match self.shape {
            Shape::Triangle => self.y + self.h - font::GLYPH_H - 1,
            _ => self.y + (self.h - font::GLYPH_H) / 2,
        };
        (gx, gy)
    }

    /// A pixel inside the shape that the digit never covers (shows the pure fill colour).
    pub fn probe(&self) -> (i32, i32) {
        let (gx, gy) = self.glyph_origin();
        match self.shape {
            Shape::Triangle => (gx + font::GLYPH_W / 2, gy - 2),
            _ => (gx - 2, gy + font::GLYPH_H / 2),
        }
    }

    /// Centre pixel of the bounding box.
    pub fn centre(&self) -> (i32, i32) {
        (self.x + self.w / 2, self.y + self.h / 2)
    }
}

/// Object selector: a colour, a shape, or both (at least one is set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Filter {
    pub colour: Option<Colour>,
    pub shape: Option<Shape>,
}

impl Filter {
    pub fn matches(&self, o: &Object) -> bool {
        self.colour.is_none_or(|c| c == o.colour) && self.shape.is_none_or(|s| s == o.shape)
    }

    /// Text used in questions and steps: "red", "circle" or "red circle".
    pub fn text(&self) -> String {
        match (self.colour, self.shape) {
            (Some(c), Some(s)) => format!("{} {}", c.name(), s.name()),
            (Some(c), None) => c.name().to_string(),
            (None, Some(s)) => s.name().to_string(),
            (None, None) => "all".to_string(),
        }
    }

    /// Inverse of `text` for the one- and two-word forms (lower-case input).
    pub fn parse(s: &str) -> Option<Filter> {
        let words: Vec<&str> = s.split_whitespace().collect();
        match words.as_slice() {
            [w] => {
                if let Some(c) = Colour::parse(w) {
                    Some(Filter { colour: Some(c), shape: None })
                } else {
                    Shape::parse(w).map(|s| Filter { colour: None, shape: Some(s) })
                }
            }
            [c, s] => Some(Filter { colour: Some(Colour::parse(c)?), shape: Some(Shape::parse(s)?) }),
            _ => None,
        }
    }
}

/// A whole image: objects are stored in reading order (grid row, then column).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scene {
    pub width: u32,
    pub height: u32,
    pub objects: Vec<Object>,
}

impl Scene {
    /// A description of every object in reading order (row, then column), one sentence per
    /// line in the chain-of-thought grammar: "The red triangle shows 1." — perception
    /// supervision for warm-up.
    pub fn caption(&self) -> String {
        let mut objs: Vec<&Object> = self.objects.iter().collect();
        objs.sort_by_key(|o| (o.row, o.col));
        objs.iter().map(|o| format!("The {} {} shows {}.", o.colour.name(), o.shape.name(), o.digit)).collect::<Vec<_>>().join("\n")
    }

    /// Per grid cell in reading order: its object's digit (0–9), or 10 when empty — labels for
    /// vision pretraining (`train` with `objective: regions`).
    pub fn cell_labels(&self) -> Vec<i32> {
        let mut out = vec![10; (GRID * GRID) as usize];
        for o in &self.objects {
            out[(o.row * GRID + o.col) as usize] = i32::from(o.digit);
        }
        out
    }

    /// Per grid cell in reading order: 0 when empty, else 1 + (shape·4 + colour)·10 + digit
    /// (121 classes) — vision pretraining labels that ask for everything a cell shows.
    pub fn cell_classes(&self) -> Vec<i32> {
        let mut out = vec![0; (GRID * GRID) as usize];
        for o in &self.objects {
            let shape = Shape::ALL.iter().position(|&s| s == o.shape).unwrap_or(0) as i32;
            let colour = Colour::ALL.iter().position(|&c| c == o.colour).unwrap_or(0) as i32;
            out[(o.row * GRID + o.col) as usize] = 1 + (shape * 4 + colour) * 10 + i32::from(o.digit);
        }
        out
    }

    /// Every cell of the 3×3 grid in reading order, one line each: "top left: red circle 7" or
    /// "centre: empty". The fixed layout ties each line to one image region, which makes
    /// perception easier to learn than from `caption`.
    pub fn grid_caption(&self) -> String {
        const ROWS: [&str; 3] = ["top", "middle", "bottom"];
        const COLS: [&str; 3] = ["left", "middle", "right"];
        let mut lines = Vec::with_capacity(9);
        for row in 0..GRID {
            for col in 0..GRID {
                let place = if row == 1 && col == 1 { "centre".to_string() } else { format!("{} {}", ROWS[row as usize], COLS[col as usize]) };
                let what = match self.objects.iter().find(|o| o.row == row && o.col == col) {
                    Some(o) => format!("{} {} {}", o.colour.name(), o.shape.name(), o.digit),
                    None => "empty".to_string(),
                };
                lines.push(format!("{place}: {what}"));
            }
        }
        lines.join("\n")
    }
}

impl Scene {
    /// Samples `n` (1..=9) objects in distinct grid cells with random shape, colour, digit and jitter.
    pub fn sample(rng: &mut Rng, n: usize) -> Scene {
        let cells_total = (GRID * GRID) as usize;
        assert!((1..=cells_total).contains(&n));
        let mut cells: Vec<u32> = (0..GRID * GRID).collect();
        rng.shuffle(&mut cells);
        let mut chosen = cells[..n].to_vec();
        chosen.sort_unstable();
        let objects = chosen
            .into_iter()
            .map(|cell| {
                let (row, col) = (cell / GRID, cell % GRID);
                let shape = *rng.pick(&Shape::ALL);
                let colour = *rng.pick(&Colour::ALL);
                let digit = rng.below(10) as u8;
                let (w, h) = shape.size();
                let free_x = CELL - 2 * MARGIN - w;
                let free_y = CELL - 2 * MARGIN - h;
                let x = ORIGIN + col as i32 * CELL + MARGIN + rng.range(0, i64::from(free_x)) as i32;
                let y = ORIGIN + row as i32 * CELL + MARGIN + rng.range(0, i64::from(free_y)) as i32;
                Object { shape, colour, digit, row, col, x, y, w, h }
            })
            .collect();
        Scene { width: SIZE, height: SIZE, objects }
    }

    /// Objects matching `f`, in reading order.
    pub fn matching(&self, f: &Filter) -> Vec<&Object> {
        self.objects.iter().filter(|o| f.matches(o)).collect()
    }

    /// Digits on the objects matching `f`, in reading order.
    pub fn digits(&self, f: &Filter) -> Vec<i64> {
        self.matching(f).iter().map(|o| i64::from(o.digit)).collect()
    }

    /// Sum of the digits of each colour, indexed by `Colour::index`.
    pub fn colour_sums(&self) -> [i64; 4] {
        let mut sums = [0i64; 4];
        for o in &self.objects {
            sums[o.colour.index()] += i64::from(o.digit);
        }
        sums
    }

    /// Rasterizes the scene.
    pub fn render(&self) -> RgbImage {
        let mut img = RgbImage::from_pixel(self.width, self.height, Rgb(BACKGROUND));
        for o in &self.objects {
            let fill = Rgb(o.colour.rgb());
            for py in o.y..o.y + o.h {
                for px in o.x..o.x + o.w {
                    if o.contains(px, py) && px >= 0 && py >= 0 && (px as u32) < self.width && (py as u32) < self.height {
                        img.put_pixel(px as u32, py as u32, fill);
                    }
                }
            }
            let ink = Rgb(o.colour.ink());
            let (gx, gy) = o.glyph_origin();
            for y in 0..font::GLYPH_H {
                for x in 0..font::GLYPH_W {
                    if font::ink(o.digit, x, y) {
                        img.put_pixel((gx + x) as u32, (gy + y) as u32, ink);
                    }
                }
            }
        }
        img
    }

    /// The rendered scene as PNG bytes.
    pub fn to_png(&self) -> Vec<u8> {
        let img = self.render();
        let mut buf = Vec::new();
        image::codecs::png::PngEncoder::new(&mut buf)
            .write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgb8)
            .expect("PNG encoding into memory cannot fail");
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glyph_fits_inside_every_shape() {
        for shape in Shape::ALL {
            let (w, h) = shape.size();
            let o = Object { shape, colour: Colour::Red, digit: 8, row: 0, col: 0, x: 0, y: 0, w, h };
            let (gx, gy) = o.glyph_origin();
            for y in -1..=font::GLYPH_H {
                for x in -1..=font::GLYPH_W {
                    // glyph plus a one-pixel fill border must be inside the shape
                    assert!(o.contains(gx + x, gy + y), "{shape:?}: ({x},{y}) outside");
                }
            }
            let (px, py) = o.probe();
            assert!(o.contains(px, py));
            assert!(!(gx..gx + font::GLYPH_W).contains(&px) || !(gy..gy + font::GLYPH_H).contains(&py));
        }
    }

    #[test]
    fn caption_reads_objects_row_by_row() {
        let o = |shape, colour, digit, row, col| Object { shape, colour, digit, row, col, x: 0, y: 0, w: 12, h: 12 };
        let scene = Scene { width: 56, height: 56, objects: vec![o(Shape::Circle, Colour::Blue, 4, 1, 0), o(Shape::Triangle, Colour::Red, 1, 0, 2)] };
        assert_eq!(scene.caption(), "The red triangle shows 1.\nThe blue circle shows 4.");
        assert_eq!(
            scene.grid_caption(),
            "top left: empty\ntop middle: empty\ntop right: red triangle 1\nmiddle left: blue circle 4\ncentre: empty\nmiddle right: empty\nbottom left: empty\nbottom middle: empty\nbottom right: empty"
        );
        assert_eq!(scene.cell_labels(), vec![10, 10, 1, 4, 10, 10, 10, 10, 10]);
        // triangle (2) red (0) 1 → 1 + 80 + 1; circle (0) blue (2) 4 → 1 + 20 + 4
        assert_eq!(scene.cell_classes(), vec![0, 0, 82, 25, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn filter_text_roundtrip() {
        for c in [None, Some(Colour::Red), Some(Colour::Yellow)] {
            for s in [None, Some(Shape::Circle), Some(Shape::Triangle)] {
                if c.is_none() && s.is_none() {
                    continue;
                }
                let f = Filter { colour: c, shape: s };
                assert_eq!(Filter::parse(&f.text()), Some(f));
            }
        }
        assert_eq!(Filter::parse("circle red"), None);
        assert_eq!(Filter::parse("purple"), None);
    }

    #[test]
    fn objects_in_bounds_and_disjoint() {
        let mut rng = Rng::new(3);
        for _ in 0..300 {
            let n = rng.range(1, 9) as usize;
            let s = Scene::sample(&mut rng, n);
            for (i, a) in s.objects.iter().enumerate() {
                assert!(a.x >= 0 && a.y >= 0 && a.x + a.w <= SIZE as i32 && a.y + a.h <= SIZE as i32);
                for b in &s.objects[i + 1..] {
                    // at least a one-pixel gap between bounding boxes
                    let apart = a.x + a.w < b.x || b.x + b.w < a.x || a.y + a.h < b.y || b.y + b.h < a.y;
                    assert!(apart, "{a:?} touches {b:?}");
                    assert!((a.row, a.col) < (b.row, b.col), "not in reading order");
                }
            }
        }
    }
}
