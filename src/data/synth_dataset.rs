//! `mstar data synth`: writes the synthetic task's splits as Parquet in the prompts schema, plus
//! the columns the oracle and warm-up need (scene, meta, gold_cot, qtype, num_steps).

use super::prompts::{Image, PromptRow, PromptsBuilder};
use super::synth;
use arrow::array::{ArrayRef, Int32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use std::path::Path;
use std::sync::Arc;

/// Bump when the generator's output changes for the same seed (it is part of fingerprints).
pub const GENERATOR_VERSION: u32 = 1;

/// How many examples each split gets.
#[derive(Debug, Clone)]
pub struct SynthSizes {
    pub train: u64,
    /// Train prompts (the first ones) that carry the gold chain of thought, for warm-up.
    pub cot: u64,
    pub unlabeled: u64,
    pub val: u64,
    pub test: u64,
    pub test_hard: u64,
}

impl Default for SynthSizes {
    fn default() -> Self {
        Self { train: 4000, cot: 600, unlabeled: 2000, val: 500, test: 1000, test_hard: 500 }
    }
}

/// The synthetic prompts schema: the prompts table plus the oracle's and warm-up's columns.
pub fn schema() -> SchemaRef {
    let mut fields: Vec<Field> = super::prompts::prompts_schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.extend([
        Field::new("qtype", DataType::Utf8, false),
        Field::new("num_steps", DataType::Int32, false),
        Field::new("gold_cot", DataType::Utf8, true),
        Field::new("scene", DataType::Utf8, false),
        Field::new("meta", DataType::Utf8, false),
    ]);
    Arc::new(Schema::new(fields))
}

/// Examples `range` of a split as one batch.
pub fn batch(seed: u64, split: &str, range: std::ops::Range<u64>, sizes: &SynthSizes) -> RecordBatch {
    let hard = split == "test_hard";
    let labeled = split != "unlabeled";
    let mut b = PromptsBuilder::new();
    let (mut qtype, mut steps, mut cot, mut scene, mut meta) = (vec![], vec![], vec![], vec![], vec![]);
    for i in range {
        let ex = synth::generate(seed, split, i, hard);
        b.push(&PromptRow {
            prompt_id: ex.prompt_id.clone(),
            question: ex.question.clone(),
            images: vec![Image { bytes: ex.image_png.clone(), path: Some(format!("{}.png", ex.prompt_id)) }],
            choices: ex.choices.clone(),
            answer: labeled.then(|| ex.answer.clone()),
            answer_type: ex.answer_type.to_string(),
            precision: None,
            source: "synth".into(),
            split: split.into(),
        });
        qtype.push(ex.meta.qtype.clone());
        steps.push(ex.num_steps as i32);
        cot.push((split == "train" && i < sizes.cot).then(|| ex.gold_cot.clone()));
        scene.push(serde_json::to_string(&ex.scene).expect("scene serializes"));
        meta.push(serde_json::to_string(&ex.meta).expect("meta serializes"));
    }
    let base = b.finish();
    let mut cols: Vec<ArrayRef> = base.columns().to_vec();
    cols.push(Arc::new(StringArray::from(qtype)));
    cols.push(Arc::new(Int32Array::from(steps)));
    cols.push(Arc::new(StringArray::from(cot)));
    cols.push(Arc::new(StringArray::from(scene)));
    cols.push(Arc::new(StringArray::from(meta)));
    RecordBatch::try_new(schema(), cols).expect("synth batch matches its schema")
}

pub const SPLITS: [&str; 5] = ["train", "unlabeled", "val", "test", "test_hard"];

/// Writes `<out>/<split>.parquet` for every split; returns (split, rows).
pub fn write(out: &Path, seed: u64, sizes: &SynthSizes) -> Result<Vec<(String, u64)>, crate::Error> {
    std::fs::create_dir_all(out)?;
    let mut written = Vec::new();
    for split in SPLITS {
        let n = match split {
            "train" => sizes.train,
            "unlabeled" => sizes.unlabeled,
            "val" => sizes.val,
            "test" => sizes.test,
            _ => sizes.test_hard,
        };
        let path = out.join(format!("{split}.parquet"));
        let tmp = out.join(format!(".{split}.parquet.tmp"));
        let file = std::fs::File::create(&tmp)?;
        let props = parquet::file::properties::WriterProperties::builder().set_compression(parquet::basic::Compression::ZSTD(Default::default())).build();
        let mut w = parquet::arrow::ArrowWriter::try_new(file, schema(), Some(props)).map_err(|e| crate::Error::Usage(e.to_string()))?;
        let mut start = 0;
        while start < n {
            let end = (start + 1024).min(n);
            w.write(&batch(seed, split, start..end, sizes)).map_err(|e| crate::Error::Usage(e.to_string()))?;
            start = end;
        }
        if n == 0 {
            w.write(&RecordBatch::new_empty(schema())).map_err(|e| crate::Error::Usage(e.to_string()))?;
        }
        w.close().map_err(|e| crate::Error::Usage(e.to_string()))?;
        std::fs::rename(&tmp, &path)?;
        written.push((split.to_string(), n));
    }
    Ok(written)
}

/// Writes `count` examples of a split as PNGs scaled ×`scale` plus a markdown page of their
/// questions and gold chains, for documentation.
pub fn write_examples(dir: &Path, seed: u64, which: &[(&str, u64)], scale: u32) -> Result<(), crate::Error> {
    std::fs::create_dir_all(dir)?;
    let mut md = String::from("| image | question | gold chain of thought |\n|---|---|---|\n");
    for (split, i) in which.iter().flat_map(|(s, n)| (0..*n).map(move |i| (*s, i))) {
        let ex = synth::generate(seed, split, i, split == "test_hard");
        let img = image::load_from_memory(&ex.image_png).map_err(|e| crate::Error::Usage(e.to_string()))?;
        let big = img.resize(img.width() * scale, img.height() * scale, image::imageops::FilterType::Nearest);
        let name = format!("{}.png", ex.prompt_id);
        big.save(dir.join(&name)).map_err(|e| crate::Error::Usage(e.to_string()))?;
        let cell = |s: &str| s.replace('|', "\\|").replace('\n', "<br>");
        md.push_str(&format!("| ![{}]({name}) | {} | {} |\n", ex.prompt_id, cell(&ex.question), cell(&ex.gold_cot)));
    }
    std::fs::write(dir.join("README.md"), md)?;
    Ok(())
}
