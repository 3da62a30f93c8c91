//! SQL functions over responses: `extract_answer(response)`, `answer_match(pred, answer,
//! answer_type, precision, choices)` and `split_steps(response)`, registered in every session.

use crate::data::answer::{self, AnswerType};
use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, ListBuilder, StringArray, StringBuilder};
use arrow::compute::cast;
use arrow_schema::{DataType, Field};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};
use datafusion::prelude::SessionContext;
use std::sync::Arc;

/// Registers mstar's functions in a session.
pub fn register(ctx: &SessionContext) {
    ctx.register_udf(ScalarUDF::from(ExtractAnswer::default()));
    ctx.register_udf(ScalarUDF::from(AnswerMatch::default()));
    ctx.register_udf(ScalarUDF::from(SplitSteps::default()));
    ctx.register_udf(ScalarUDF::from(SynthStepsOk::default()));
    ctx.register_udf(ScalarUDF::from(SynthStepsOk { per_step: true, ..Default::default() }));
    ctx.register_udf(ScalarUDF::from(SynthCaption::default()));
    ctx.register_udf(ScalarUDF::from(SynthCaption { grid: true, ..Default::default() }));
    ctx.register_udf(ScalarUDF::from(SynthCellLabels::default()));
    ctx.register_udf(ScalarUDF::from(SynthCellLabels { full: true, ..Default::default() }));
    ctx.register_udf(ScalarUDF::from(SynthDrills::default()));
    ctx.register_udf(ScalarUDF::from(ShardOf::default()));
}

/// `shard_of(prompt_id, n)`: the shard (0..n) a sharded stage computes this prompt in
/// (`crate::shard::shard_of`: FNV-1a of the id's UTF-8 bytes mod n); NULL id → NULL.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ShardOf {
    signature: Signature,
}

impl Default for ShardOf {
    fn default() -> Self {
        Self { signature: Signature::user_defined(Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for ShardOf {
    fn name(&self) -> &str {
        "shard_of"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, t: &[DataType]) -> Result<Vec<DataType>> {
        coerce(self.name(), t, &['s', 'i'])
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int32)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let a = arrays(&args)?;
        let ids = strings(&a[0])?;
        let n = cast(&a[1], &DataType::Int32)?;
        let n = n.as_primitive::<arrow::datatypes::Int32Type>();
        let mut out = arrow::array::Int32Builder::with_capacity(ids.len());
        for i in 0..ids.len() {
            if ids.is_null(i) || n.is_null(i) {
                out.append_null();
                continue;
            }
            let k = n.value(i);
            if k < 1 {
                return Err(DataFusionError::Execution(format!("shard_of: the number of shards must be at least 1, got {k}")));
            }
            out.append_value(crate::shard::shard_of(ids.value(i), k as u32) as i32);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

fn utf8_list() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)))
}

/// Coerces every argument to `Utf8`, `Int32` or `List(Utf8)` as `want` says ('s', 'i', 'l');
/// NULL literals stay NULL.
fn coerce(name: &str, got: &[DataType], want: &[char]) -> Result<Vec<DataType>> {
    if got.len() != want.len() {
        return Err(DataFusionError::Plan(format!("{name} takes {} argument(s), got {}", want.len(), got.len())));
    }
    got.iter()
        .zip(want)
        .map(|(t, w)| {
            Ok(match (t, w) {
                (DataType::Null, _) => DataType::Null,
                (DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 | DataType::Dictionary(..), 's') => DataType::Utf8,
                (t, 'i') if t.is_integer() || t.is_floating() => DataType::Int32,
                (DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(..) | DataType::ListView(_), 'l') => utf8_list(),
                (t, w) => {
                    let kind = match w {
                        's' => "a string",
                        'i' => "an integer",
                        _ => "a list of strings",
                    };
                    return Err(DataFusionError::Plan(format!("{name}: expected {kind}, got {t}")));
                }
            })
        })
        .collect()
}

fn arrays(args: &ScalarFunctionArgs) -> Result<Vec<ArrayRef>> {
    ColumnarValue::values_to_arrays(&args.args)
}

fn strings(a: &ArrayRef) -> Result<StringArray> {
    Ok(cast(a, &DataType::Utf8)?.as_string::<i32>().clone())
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct ExtractAnswer {
    signature: Signature,
}

impl Default for ExtractAnswer {
    fn default() -> Self {
        Self { signature: Signature::user_defined(Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for ExtractAnswer {
    fn name(&self) -> &str {
        "extract_answer"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, t: &[DataType]) -> Result<Vec<DataType>> {
        coerce(self.name(), t, &['s'])
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let a = arrays(&args)?;
        let r = strings(&a[0])?;
        let out: StringArray = r.iter().map(|s| s.and_then(answer::extract_answer)).collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct AnswerMatch {
    signature: Signature,
}

impl Default for AnswerMatch {
    fn default() -> Self {
        Self { signature: Signature::user_defined(Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for AnswerMatch {
    fn name(&self) -> &str {
        "answer_match"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, t: &[DataType]) -> Result<Vec<DataType>> {
        coerce(self.name(), t, &['s', 's', 's', 'i', 'l'])
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }
    /// NULL prediction or gold answer → false; an unknown answer_type is an error.
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let a = arrays(&args)?;
        let pred = strings(&a[0])?;
        let gold = strings(&a[1])?;
        let kind = strings(&a[2])?;
        let precision = cast(&a[3], &DataType::Int32)?;
        let precision = precision.as_primitive::<arrow::datatypes::Int32Type>();
        let choices = if a[4].data_type() == &DataType::Null { None } else { Some(cast(&a[4], &utf8_list())?) };
        let choices = choices.as_ref().map(|c| c.as_list::<i32>());
        let mut out = Vec::with_capacity(pred.len());
        for i in 0..pred.len() {
            let (Some(p), Some(g)) = (pred.is_valid(i).then(|| pred.value(i)), gold.is_valid(i).then(|| gold.value(i))) else {
                out.push(Some(false));
                continue;
            };
            let t = if kind.is_valid(i) { kind.value(i) } else { "text" };
            let t = t.parse::<AnswerType>().map_err(|e| DataFusionError::Execution(format!("answer_match: {e}")))?;
            let prec = precision.is_valid(i).then(|| precision.value(i));
            let ch: Option<Vec<String>> = choices.and_then(|c| {
                if c.is_null(i) {
                    return None;
                }
                let v = c.value(i);
                let v = v.as_string::<i32>();
                let items: Vec<String> = v.iter().map(|s| s.unwrap_or_default().to_string()).collect();
                (!items.is_empty()).then_some(items)
            });
            out.push(Some(answer::answer_match(p, g, t, prec, ch.as_deref())));
        }
        Ok(ColumnarValue::Array(Arc::new(BooleanArray::from(out))))
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct SplitSteps {
    signature: Signature,
}

impl Default for SplitSteps {
    fn default() -> Self {
        Self { signature: Signature::user_defined(Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for SplitSteps {
    fn name(&self) -> &str {
        "split_steps"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, t: &[DataType]) -> Result<Vec<DataType>> {
        coerce(self.name(), t, &['s'])
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(utf8_list())
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let a = arrays(&args)?;
        let r = strings(&a[0])?;
        let mut b = ListBuilder::new(StringBuilder::new());
        for s in r.iter() {
            match s {
                Some(s) => {
                    for step in answer::split_steps(s) {
                        b.values().append_value(step);
                    }
                    b.append(true);
                }
                None => b.append(false),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(b.finish())))
    }
}

/// `synth_steps_ok(scene, meta, response)`: the synthetic task's oracle verdict — every step
/// true for the scene and the final answer right. NULL when scene or meta is NULL.
/// `synth_step_ok(scene, meta, response, step_idx)`: the oracle's verdict on one step (0-based,
/// as `split_steps` numbers them); NULL when the step does not exist or the oracle splits the
/// response differently.
#[derive(Debug, PartialEq, Eq, Hash)]
struct SynthStepsOk {
    signature: Signature,
    per_step: bool,
}

impl Default for SynthStepsOk {
    fn default() -> Self {
        Self { signature: Signature::user_defined(Volatility::Immutable), per_step: false }
    }
}

impl ScalarUDFImpl for SynthStepsOk {
    fn name(&self) -> &str {
        if self.per_step {
            "synth_step_ok"
        } else {
            "synth_steps_ok"
        }
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, t: &[DataType]) -> Result<Vec<DataType>> {
        coerce(self.name(), t, if self.per_step { &['s', 's', 's', 'i'] } else { &['s', 's', 's'] })
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let a = arrays(&args)?;
        let (scene, meta, resp) = (strings(&a[0])?, strings(&a[1])?, strings(&a[2])?);
        let step = if self.per_step { Some(cast(&a[3], &DataType::Int32)?.as_primitive::<arrow::datatypes::Int32Type>().clone()) } else { None };
        let mut out = Vec::with_capacity(resp.len());
        // consecutive rows usually share a prompt: parse its scene once
        let mut cached: Option<(String, String, crate::data::synth::Scene, crate::data::synth::QuestionMeta)> = None;
        for i in 0..resp.len() {
            let (Some(s), Some(m)) = (scene.is_valid(i).then(|| scene.value(i)), meta.is_valid(i).then(|| meta.value(i))) else {
                out.push(None);
                continue;
            };
            if !cached.as_ref().is_some_and(|(cs, cm, _, _)| cs == s && cm == m) {
                let sc = serde_json::from_str(s).map_err(|e| DataFusionError::Execution(format!("synth_steps_ok: bad scene JSON: {e}")))?;
                let mt = serde_json::from_str(m).map_err(|e| DataFusionError::Execution(format!("synth_steps_ok: bad meta JSON: {e}")))?;
                cached = Some((s.to_string(), m.to_string(), sc, mt));
            }
            let (_, _, sc, mt) = cached.as_ref().expect("cached");
            let r = if resp.is_valid(i) { resp.value(i) } else { "" };
            let j = crate::data::synth::judge(sc, mt, r);
            out.push(match &step {
                None => Some(j.steps_ok),
                Some(idx) if idx.is_valid(i) && j.steps.len() == answer::split_steps(r).len() => {
                    usize::try_from(idx.value(i)).ok().and_then(|k| j.steps.get(k)).map(|v| v.ok)
                }
                Some(_) => None,
            });
        }
        Ok(ColumnarValue::Array(Arc::new(BooleanArray::from(out))))
    }
}

/// `synth_caption(scene)`: every object of a synthetic scene in reading order, one sentence
/// per line ("The red triangle shows 1."). NULL when scene is NULL.
#[derive(Debug, PartialEq, Eq, Hash)]
struct SynthCaption {
    signature: Signature,
    /// `synth_grid_caption`: one line per grid cell (`Scene::grid_caption`).
    grid: bool,
}

impl Default for SynthCaption {
    fn default() -> Self {
        Self { signature: Signature::user_defined(Volatility::Immutable), grid: false }
    }
}

impl ScalarUDFImpl for SynthCaption {
    fn name(&self) -> &str {
        if self.grid {
            "synth_grid_caption"
        } else {
            "synth_caption"
        }
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, t: &[DataType]) -> Result<Vec<DataType>> {
        coerce(self.name(), t, &['s'])
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let a = arrays(&args)?;
        let scene = strings(&a[0])?;
        let out = (0..scene.len())
            .map(|i| {
                scene
                    .is_valid(i)
                    .then(|| {
                        serde_json::from_str::<crate::data::synth::Scene>(scene.value(i))
                            .map(|s| if self.grid { s.grid_caption() } else { s.caption() })
                            .map_err(|e| DataFusionError::Execution(format!("{}: bad scene JSON in row {i}: {e}", self.name())))
                    })
                    .transpose()
            })
            .collect::<Result<StringArray>>()?;
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// `synth_cell_labels(scene)`: per grid cell in reading order, the digit (0–9) or 10 when the
/// cell is empty, as a list of Int32. NULL when scene is NULL. `synth_cell_classes(scene)`:
/// the same with one class per (shape, colour, digit) and 0 for empty (`Scene::cell_classes`).
#[derive(Debug, PartialEq, Eq, Hash)]
struct SynthCellLabels {
    signature: Signature,
    full: bool,
}

impl Default for SynthCellLabels {
    fn default() -> Self {
        Self { signature: Signature::user_defined(Volatility::Immutable), full: false }
    }
}

impl ScalarUDFImpl for SynthCellLabels {
    fn name(&self) -> &str {
        if self.full {
            "synth_cell_classes"
        } else {
            "synth_cell_labels"
        }
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, t: &[DataType]) -> Result<Vec<DataType>> {
        coerce(self.name(), t, &['s'])
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::List(Arc::new(Field::new_list_field(DataType::Int32, true))))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let a = arrays(&args)?;
        let scene = strings(&a[0])?;
        let mut b = ListBuilder::new(arrow::array::Int32Builder::new());
        for i in 0..scene.len() {
            if scene.is_null(i) {
                b.append_null();
                continue;
            }
            let s: crate::data::synth::Scene =
                serde_json::from_str(scene.value(i)).map_err(|e| DataFusionError::Execution(format!("{}: bad scene JSON in row {i}: {e}", self.name())))?;
            b.values().append_slice(&if self.full { s.cell_classes() } else { s.cell_labels() });
            b.append(true);
        }
        Ok(ColumnarValue::Array(Arc::new(b.finish())))
    }
}

/// `synth_drills(scene)`: skill drills for warm-up, a list of {kind, question, response} structs
/// whose responses are single steps of the chain grammar (`synth::drills`). NULL when scene is
/// NULL. Use: `SELECT d['question'], d['response'] FROM (SELECT unnest(synth_drills(scene)) AS d …)`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct SynthDrills {
    signature: Signature,
}

impl Default for SynthDrills {
    fn default() -> Self {
        Self { signature: Signature::user_defined(Volatility::Immutable) }
    }
}

fn drill_fields() -> arrow::datatypes::Fields {
    ["kind", "question", "response"].iter().map(|n| Field::new(*n, DataType::Utf8, false)).collect::<Vec<_>>().into()
}

impl ScalarUDFImpl for SynthDrills {
    fn name(&self) -> &str {
        "synth_drills"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, t: &[DataType]) -> Result<Vec<DataType>> {
        coerce(self.name(), t, &['s'])
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::List(Arc::new(Field::new_list_field(DataType::Struct(drill_fields()), true))))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        use arrow::array::StructBuilder;
        let a = arrays(&args)?;
        let scene = strings(&a[0])?;
        let items = StructBuilder::new(drill_fields(), vec![Box::new(StringBuilder::new()), Box::new(StringBuilder::new()), Box::new(StringBuilder::new())]);
        let mut b = ListBuilder::new(items).with_field(Arc::new(Field::new_list_field(DataType::Struct(drill_fields()), true)));
        for i in 0..scene.len() {
            if scene.is_null(i) {
                b.append_null();
                continue;
            }
            let s: crate::data::synth::Scene =
                serde_json::from_str(scene.value(i)).map_err(|e| DataFusionError::Execution(format!("synth_drills: bad scene JSON in row {i}: {e}")))?;
            for d in crate::data::synth::drills(&s) {
                let st = b.values();
                st.field_builder::<StringBuilder>(0).expect("kind builder").append_value(d.kind);
                st.field_builder::<StringBuilder>(1).expect("question builder").append_value(d.question);
                st.field_builder::<StringBuilder>(2).expect("response builder").append_value(d.response);
                st.append(true);
            }
            b.append(true);
        }
        Ok(ColumnarValue::Array(Arc::new(b.finish())))
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn synth_drills_unnest_into_questions_and_responses() {
        let ctx = datafusion::prelude::SessionContext::new();
        super::register(&ctx);
        let scene = serde_json::to_string(&crate::data::synth::generate(0, "train", 0, false).scene).unwrap();
        let want = crate::data::synth::drills(&serde_json::from_str(&scene).unwrap());
        let sql = format!(
            "SELECT d['kind'] AS k, d['question'] AS q, d['response'] AS r FROM (SELECT unnest(synth_drills(scene)) AS d FROM (VALUES ('{}'), (NULL)) AS t(scene))",
            scene.replace('\'', "''")
        );
        let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
        let mut got = Vec::new();
        for b in &batches {
            let col = |j: usize| b.column(j).as_any().downcast_ref::<arrow::array::StringArray>().unwrap();
            for i in 0..b.num_rows() {
                got.push((col(0).value(i).to_string(), col(1).value(i).to_string(), col(2).value(i).to_string()));
            }
        }
        let want: Vec<_> = want.into_iter().map(|d| (d.kind.to_string(), d.question, d.response)).collect();
        assert_eq!(got, want);
        assert!(got.iter().any(|(k, q, r)| k == "count" && q.starts_with("How many red shapes are there?\n") && r.starts_with("Step 1: There are ")));
    }
}
