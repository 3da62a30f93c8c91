//! Building prompts tables: rows with validated images (struct{bytes, path}, the Hugging Face
//! `datasets` Image encoding), and the quarantine table for rows that cannot be imported.

use crate::data::answer::extract_answer;
use arrow::array::{ArrayRef, BinaryBuilder, Int32Builder, ListBuilder, RecordBatch, StringBuilder, StructBuilder};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef};
use std::sync::Arc;

/// One image: its bytes and the path it came from (either may be absent in source data).
#[derive(Debug, Clone, Default)]
pub struct Image {
    pub bytes: Vec<u8>,
    pub path: Option<String>,
}

/// A row of the prompts table.
#[derive(Debug, Clone, Default)]
pub struct PromptRow {
    pub prompt_id: String,
    pub question: String,
    pub images: Vec<Image>,
    pub choices: Option<Vec<String>>,
    pub answer: Option<String>,
    pub answer_type: String,
    pub precision: Option<i32>,
    pub source: String,
    pub split: String,
}

/// A row that could not be imported, and why.
#[derive(Debug, Clone)]
pub struct Quarantined {
    pub source: String,
    /// Where in the source: an id, or the row number.
    pub row: String,
    pub reason: String,
    /// The offending record (JSON, truncated).
    pub record: String,
}

pub fn image_type() -> DataType {
    DataType::Struct(image_fields())
}

fn image_fields() -> Fields {
    Fields::from(vec![Field::new("bytes", DataType::Binary, true), Field::new("path", DataType::Utf8, true)])
}

/// The prompts schema (see schemas/prompts.json).
pub fn prompts_schema() -> SchemaRef {
    Arc::new(crate::schemas::table("prompts").expect("prompts schema").expect("valid prompts schema"))
}

pub fn quarantine_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("source", DataType::Utf8, false),
        Field::new("row", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("record", DataType::Utf8, false),
    ]))
}

/// Default of a dataset's `max_image_pixels`: the most pixels (width × height) an image may
/// have; larger ones are quarantined from their header, before any decoding.
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 50_000_000;

/// Why an image cannot be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("empty image")]
    Empty,
    #[error("unreadable image: {0}")]
    Unreadable(String),
    #[error("undecodable image: {0}")]
    Undecodable(String),
    #[error("image is {width}x{height} = {pixels} pixels, above the limit of {limit} (max_image_pixels)")]
    TooLarge { width: u32, height: u32, pixels: u64, limit: u64 },
}

/// Decodes an image fully, to be sure it is usable; returns (width, height). Images above
/// [`DEFAULT_MAX_IMAGE_PIXELS`] are refused (see [`validate_image_within`]).
pub fn validate_image(bytes: &[u8]) -> Result<(u32, u32), ImageError> {
    validate_image_within(bytes, DEFAULT_MAX_IMAGE_PIXELS)
}

/// Checks an image's size from its header (refusing more than `max_pixels` pixels without
/// decoding it), then decodes it fully, to be sure it is usable; returns (width, height).
pub fn validate_image_within(bytes: &[u8], max_pixels: u64) -> Result<(u32, u32), ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    let reader = || image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| ImageError::Unreadable(e.to_string()));
    let (width, height) = reader()?.into_dimensions().map_err(|e| ImageError::Undecodable(e.to_string()))?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(ImageError::TooLarge { width, height, pixels, limit: max_pixels });
    }
    let img = reader()?.decode().map_err(|e| ImageError::Undecodable(e.to_string()))?;
    Ok((img.width(), img.height()))
}

/// Why a dataset-relative image path is refused ([`safe_relative`]) or cannot be read from a
/// local folder ([`resolve_below`]).
#[derive(Debug, thiserror::Error)]
pub enum ImagePathError {
    #[error("image path `{0}` escapes the dataset root (absolute path)")]
    Absolute(String),
    #[error("image path `{0}` escapes the dataset root")]
    Above(String),
    #[error("image path `{0}` names no file")]
    NoFile(String),
    #[error("missing image file `{0}`")]
    Missing(String),
    #[error("image path `{path}` escapes the dataset root (it resolves to `{target}`, outside `{root}`)")]
    Escapes { path: String, target: String, root: String },
    #[error("image `{path}`: {error}")]
    Io { path: String, error: std::io::Error },
}

/// Resolves `rel` (a path already through [`safe_relative`]) below a local folder `root`
/// that is itself canonical (`std::fs::canonicalize`): symlinks are followed, and a path
/// that then lies outside the root is refused, so its bytes are never read. `shown` is the
/// path as the dataset wrote it, for messages. Returns the resolved file to read.
pub fn resolve_below(root: &std::path::Path, rel: &str, shown: &str) -> Result<std::path::PathBuf, ImagePathError> {
    let target = std::fs::canonicalize(root.join(rel)).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => ImagePathError::Missing(shown.to_string()),
        _ => ImagePathError::Io { path: shown.to_string(), error },
    })?;
    if !target.starts_with(root) {
        return Err(ImagePathError::Escapes { path: shown.to_string(), target: target.display().to_string(), root: root.display().to_string() });
    }
    Ok(target)
}

/// Joins a dataset-relative path to a root, refusing absolute paths and any `..` that would
/// leave the root.
pub fn safe_relative(rel: &str) -> Result<String, ImagePathError> {
    let rel = rel.replace('\\', "/");
    if rel.starts_with('/') || rel.contains(':') && rel.split('/').next().is_some_and(|s| s.ends_with(':')) {
        return Err(ImagePathError::Absolute(rel));
    }
    let mut parts: Vec<&str> = Vec::new();
    for p in rel.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(ImagePathError::Above(rel));
                }
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(ImagePathError::NoFile(rel));
    }
    Ok(parts.join("/"))
}

/// Infers MathVista's answer type and precision of a free-form answer.
pub fn infer_answer_type(answer: &str) -> (&'static str, Option<i32>) {
    let a = answer.trim();
    let digits = a.strip_prefix('-').unwrap_or(a);
    if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) {
        return ("integer", None);
    }
    if let Some((i, f)) = digits.split_once('.') {
        if !i.is_empty() && !f.is_empty() && i.chars().chain(f.chars()).all(|c| c.is_ascii_digit()) {
            return ("float", Some(f.len() as i32));
        }
    }
    if a.starts_with('[') && a.ends_with(']') {
        return ("list", None);
    }
    ("text", None)
}

/// Parses "Choices:\n(A) x\n(B) y" (also "A. x" / "A: x") out of a question; returns the
/// question without the block and the options.
pub fn split_choices(question: &str) -> (String, Option<Vec<String>>) {
    let lower = question.to_ascii_lowercase();
    let Some(at) = lower.rfind("choices:") else {
        return (question.trim().to_string(), None);
    };
    let (head, tail) = (&question[..at], &question[at + "choices:".len()..]);
    let mut choices = Vec::new();
    for l in tail.lines() {
        let t = l.trim();
        if t.is_empty() {
            continue;
        }
        let letter = (b'A' + choices.len() as u8) as char;
        let stripped =
            [format!("({letter})"), format!("{letter}."), format!("{letter}:"), format!("{letter})")].iter().find_map(|p| t.strip_prefix(p.as_str()));
        match stripped {
            Some(s) => choices.push(s.trim().to_string()),
            None => break,
        }
    }
    if choices.len() < 2 {
        return (question.trim().to_string(), None);
    }
    (head.trim().to_string(), Some(choices))
}

/// Maps a gold answer given as an option letter (or "(B)" / "B. text") to the choice text.
pub fn letter_to_choice(answer: &str, choices: &[String]) -> Option<String> {
    let a = answer.trim();
    let a = extract_answer(a).unwrap_or_else(|| a.to_string());
    let t = a.trim().trim_start_matches('(');
    let letter = t.chars().next()?;
    let rest = &t[letter.len_utf8()..];
    if !letter.is_ascii_uppercase() || !(rest.is_empty() || rest.starts_with([')', '.', ':', ' '])) {
        return choices.iter().find(|c| c.trim() == a.trim()).cloned();
    }
    choices.get((letter as u8 - b'A') as usize).cloned()
}

/// Accumulates rows into record batches of the prompts schema.
pub struct PromptsBuilder {
    prompt_id: StringBuilder,
    question: StringBuilder,
    images: ListBuilder<StructBuilder>,
    choices: ListBuilder<StringBuilder>,
    answer: StringBuilder,
    answer_type: StringBuilder,
    precision: Int32Builder,
    source: StringBuilder,
    split: StringBuilder,
    rows: usize,
}

impl Default for PromptsBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl PromptsBuilder {
    pub fn new() -> Self {
        let schema = prompts_schema();
        let img_field = match schema.field_with_name("images").expect("images").data_type() {
            DataType::List(f) => f.clone(),
            _ => unreachable!("images is a list"),
        };
        let choice_field = match schema.field_with_name("choices").expect("choices").data_type() {
            DataType::List(f) => f.clone(),
            _ => unreachable!("choices is a list"),
        };
        let structs = StructBuilder::new(image_fields(), vec![Box::new(BinaryBuilder::new()), Box::new(StringBuilder::new())]);
        Self {
            prompt_id: StringBuilder::new(),
            question: StringBuilder::new(),
            images: ListBuilder::new(structs).with_field(img_field),
            choices: ListBuilder::new(StringBuilder::new()).with_field(choice_field),
            answer: StringBuilder::new(),
            answer_type: StringBuilder::new(),
            precision: Int32Builder::new(),
            source: StringBuilder::new(),
            split: StringBuilder::new(),
            rows: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    pub fn push(&mut self, r: &PromptRow) {
        self.prompt_id.append_value(&r.prompt_id);
        self.question.append_value(&r.question);
        for img in &r.images {
            let s = self.images.values();
            s.field_builder::<BinaryBuilder>(0).expect("bytes").append_value(&img.bytes);
            s.field_builder::<StringBuilder>(1).expect("path").append_option(img.path.as_deref());
            s.append(true);
        }
        self.images.append(true);
        match &r.choices {
            Some(c) => {
                for x in c {
                    self.choices.values().append_value(x);
                }
                self.choices.append(true);
            }
            None => self.choices.append(false),
        }
        self.answer.append_option(r.answer.as_deref());
        self.answer_type.append_value(&r.answer_type);
        self.precision.append_option(r.precision);
        self.source.append_value(&r.source);
        self.split.append_value(&r.split);
        self.rows += 1;
    }

    pub fn finish(&mut self) -> RecordBatch {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.prompt_id.finish()),
            Arc::new(self.question.finish()),
            Arc::new(self.images.finish()),
            Arc::new(self.choices.finish()),
            Arc::new(self.answer.finish()),
            Arc::new(self.answer_type.finish()),
            Arc::new(self.precision.finish()),
            Arc::new(self.source.finish()),
            Arc::new(self.split.finish()),
        ];
        self.rows = 0;
        RecordBatch::try_new(prompts_schema(), cols).expect("prompts batch matches its schema")
    }
}

pub fn quarantine_batch(rows: &[Quarantined]) -> RecordBatch {
    let col = |f: &dyn Fn(&Quarantined) -> &str| -> ArrayRef { Arc::new(arrow::array::StringArray::from_iter_values(rows.iter().map(f))) };
    RecordBatch::try_new(quarantine_schema(), vec![col(&|q| &q.source), col(&|q| &q.row), col(&|q| &q.reason), col(&|q| &q.record)]).expect("quarantine batch")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_safety() {
        assert_eq!(safe_relative("images/1.png").unwrap(), "images/1.png");
        assert_eq!(safe_relative("./a/../b.png").unwrap(), "b.png");
        assert!(matches!(safe_relative("../x.png"), Err(ImagePathError::Above(_))));
        assert_eq!(safe_relative("a\\..\\..\\x.png").unwrap_err().to_string(), "image path `a/../../x.png` escapes the dataset root");
        assert_eq!(safe_relative("C:/x.png").unwrap_err().to_string(), "image path `C:/x.png` escapes the dataset root (absolute path)");
        assert_eq!(safe_relative("./").unwrap_err().to_string(), "image path `./` names no file");
        assert!(safe_relative("a/../../x.png").is_err());
        assert!(safe_relative("/etc/passwd").is_err());
        assert!(safe_relative("C:/x.png").is_err());
    }

    /// A PNG whose IHDR claims `w`×`h` pixels (its CRC recomputed), made from a real 1×1 PNG.
    fn png_claiming(w: u32, h: u32) -> Vec<u8> {
        let mut png = Vec::new();
        image::DynamicImage::ImageRgb8(image::RgbImage::new(1, 1)).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
        assert_eq!(&png[12..16], b"IHDR");
        png[16..20].copy_from_slice(&w.to_be_bytes());
        png[20..24].copy_from_slice(&h.to_be_bytes());
        let mut crc = 0xFFFF_FFFFu32;
        for &b in &png[12..29] {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 { 0xEDB8_8320 ^ (crc >> 1) } else { crc >> 1 };
            }
        }
        png[29..33].copy_from_slice(&(!crc).to_be_bytes());
        png
    }

    #[test]
    fn image_size_is_checked_from_the_header() {
        assert_eq!(validate_image_within(&png_claiming(1, 1), 1).unwrap(), (1, 1));
        let err = validate_image_within(&png_claiming(20_000, 20_000), DEFAULT_MAX_IMAGE_PIXELS).unwrap_err();
        assert!(matches!(err, ImageError::TooLarge { width: 20_000, height: 20_000, pixels: 400_000_000, .. }), "{err}");
        assert!(validate_image(&png_claiming(20_000, 20_000)).unwrap_err().to_string().contains("max_image_pixels"));
        // a configurable limit
        assert!(matches!(validate_image_within(&png_claiming(2, 2), 3), Err(ImageError::TooLarge { .. })));
        assert!(matches!(validate_image_within(b"", 3), Err(ImageError::Empty)));
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_out_of_the_root_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("ds");
        std::fs::create_dir_all(root.join("images")).unwrap();
        std::fs::write(root.join("images/a.png"), b"x").unwrap();
        std::fs::write(d.path().join("secret.png"), b"s").unwrap();
        std::os::unix::fs::symlink(d.path().join("secret.png"), root.join("images/out.png")).unwrap();
        std::os::unix::fs::symlink("a.png", root.join("images/in.png")).unwrap();
        std::os::unix::fs::symlink(d.path(), root.join("up")).unwrap();
        let root = std::fs::canonicalize(&root).unwrap();
        assert_eq!(resolve_below(&root, "images/in.png", "images/in.png").unwrap(), root.join("images/a.png"));
        let err = resolve_below(&root, "images/out.png", "images/out.png").unwrap_err();
        assert!(matches!(err, ImagePathError::Escapes { .. }), "{err}");
        assert!(err.to_string().contains("`images/out.png` escapes the dataset root"), "{err}");
        assert!(matches!(resolve_below(&root, "up/secret.png", "up/secret.png"), Err(ImagePathError::Escapes { .. })));
        assert!(matches!(resolve_below(&root, "images/none.png", "images/none.png"), Err(ImagePathError::Missing(_))));
    }

    #[test]
    fn choices_and_answer_types() {
        let (q, c) = split_choices("Which is larger?\nChoices:\n(A) 3\n(B) 5");
        assert_eq!(q, "Which is larger?");
        assert_eq!(c.unwrap(), vec!["3", "5"]);
        let (_, c) = split_choices("Pick one. Choices: A. red\nB. blue");
        assert_eq!(c.unwrap(), vec!["red", "blue"]);
        assert_eq!(letter_to_choice("B", &["x".into(), "y".into()]).unwrap(), "y");
        assert_eq!(letter_to_choice("(A) x", &["x".into(), "y".into()]).unwrap(), "x");
        assert_eq!(infer_answer_type("12"), ("integer", None));
        assert_eq!(infer_answer_type("-1.25"), ("float", Some(2)));
        assert_eq!(infer_answer_type("[1, 2]"), ("list", None));
        assert_eq!(infer_answer_type("Yes"), ("text", None));
    }

    #[test]
    fn builds_a_batch() {
        let mut b = PromptsBuilder::new();
        b.push(&PromptRow {
            prompt_id: "1".into(),
            question: "q".into(),
            images: vec![Image { bytes: vec![1, 2], path: Some("a.png".into()) }],
            answer_type: "text".into(),
            ..Default::default()
        });
        let batch = b.finish();
        assert_eq!(batch.num_rows(), 1);
        assert_eq!(batch.schema(), prompts_schema());
    }
}
