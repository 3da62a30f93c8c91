//! `mstar serve DIR`: an OpenAI-compatible chat-completions server over a local Qwen-VL
//! checkpoint (POST /v1/chat/completions, GET /v1/models). Requests are answered one at a time.

use super::{template_messages, ChatRequest};
use crate::model::generate::SamplingParams;
use crate::model::qwen2_5_vl::generate::{generate, Prompt};
use crate::model::qwen_vl::Checkpoint;
use bytes::Bytes;
use candle_core::Tensor;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;

pub struct Server {
    ck: Checkpoint,
    name: String,
    eos: Vec<u32>,
    device: candle_core::Device,
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    Response::builder().status(status).header("content-type", "application/json").body(Full::new(Bytes::from(body.to_string()))).expect("valid response")
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response<Full<Bytes>> {
    reply(status, json!({"error": {"message": msg.into(), "type": if status.is_client_error() { "invalid_request_error" } else { "server_error" }}}))
}

/// The seed of choice j of a request seeded with `seed`: the seed itself for the first.
pub fn choice_seed(seed: u64, j: u32) -> u64 {
    if j == 0 {
        seed
    } else {
        crate::model::generate::rollout_seed(seed, 0, "choice", j)
    }
}

impl Server {
    pub fn new(ck: Checkpoint, name: String, eos: Vec<u32>, device: candle_core::Device) -> Self {
        Self { ck, name, eos, device }
    }

    /// Answers one chat-completions request body.
    pub fn complete(&self, body: &[u8]) -> Result<Value, (StatusCode, String)> {
        let bad = |m: String| (StatusCode::BAD_REQUEST, m);
        let req: ChatRequest = serde_json::from_slice(body).map_err(|e| bad(format!("request body: {e}")))?;
        if req.stream == Some(true) {
            return Err(bad("stream: true is not supported".into()));
        }
        let (messages, images) = template_messages(&req.messages).map_err(bad)?;
        let ck = &self.ck;
        let mut values = Vec::new();
        let mut grids = Vec::new();
        for (i, b) in images.iter().enumerate() {
            let p = ck.processor.preprocess_bytes(b).map_err(|e| bad(format!("image {i}: {e}")))?;
            grids.push(p.grid);
            values.extend(p.values);
        }
        let text = ck.chat.render(&messages, true).map_err(|e| bad(e.to_string()))?;
        let text = ck.expand_image_pads(&text, &grids).map_err(|e| bad(e.to_string()))?;
        let ids = ck.encode(&text).map_err(|e| bad(e.to_string()))?;
        let pixels = if grids.is_empty() {
            None
        } else {
            let cols = 3 * ck.processor.temporal_patch_size * ck.processor.patch_size * ck.processor.patch_size;
            Some(Tensor::from_vec(values.clone(), (values.len() / cols, cols), &self.device).map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?)
        };
        let params = SamplingParams {
            temperature: req.temperature.unwrap_or(1.0),
            top_p: req.top_p.unwrap_or(1.0),
            top_k: req.top_k.filter(|&k| k > 0).unwrap_or(0) as usize,
            max_new_tokens: req.max_completion_tokens.or(req.max_tokens).unwrap_or(256),
        };
        if !(params.temperature >= 0.0 && params.top_p > 0.0 && params.top_p <= 1.0) {
            return Err(bad("temperature must be ≥ 0 and top_p in (0, 1]".into()));
        }
        let n = req.n.unwrap_or(1).max(1);
        let seed = req.seed.unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0));
        let seeds: Vec<u64> = (0..n).map(|j| choice_seed(seed, j)).collect();
        let prompt_tokens = ids.len();
        let gens = generate(&ck.model, &Prompt { ids, pixels, grids }, &seeds, &params, &self.eos).map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let mut completion = 0;
        let choices: Vec<Value> = gens
            .iter()
            .enumerate()
            .map(|(j, g)| {
                completion += g.tokens.len();
                let text = ck.tokenizer.decode(&g.tokens, true).unwrap_or_default();
                let mut c = json!({"index": j, "message": {"role": "assistant", "content": text}, "finish_reason": g.finish_reason});
                if req.logprobs == Some(true) {
                    // mstar's extension: the sum under the untempered model, and the token count
                    c["logprobs"] = json!({"sum": g.logprob, "tokens": g.tokens.len()});
                }
                c
            })
            .collect();
        let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        Ok(json!({
            "id": format!("chatcmpl-{seed:016x}"),
            "object": "chat.completion",
            "created": created,
            "model": self.name,
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion},
        }))
    }

    async fn handle(self: Arc<Self>, req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
        let (method, path) = (req.method().clone(), req.uri().path().to_string());
        Ok(match (method, path.as_str()) {
            (Method::GET, "/v1/models") => reply(StatusCode::OK, json!({"object": "list", "data": [{"id": self.name, "object": "model", "owned_by": "mstar"}]})),
            (Method::POST, "/v1/chat/completions") => {
                let body = req.into_body().collect().await?.to_bytes();
                let me = self.clone();
                match tokio::task::spawn_blocking(move || me.complete(&body)).await {
                    Ok(Ok(v)) => reply(StatusCode::OK, v),
                    Ok(Err((status, msg))) => error(status, msg),
                    Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                }
            }
            (_, "/v1/models" | "/v1/chat/completions") => error(StatusCode::METHOD_NOT_ALLOWED, format!("{} does not take {}", path, req.method())),
            _ => error(StatusCode::NOT_FOUND, format!("no route {path} (POST /v1/chat/completions, GET /v1/models)")),
        })
    }

    /// Serves on `listener` until the process ends; one request computes at a time.
    pub async fn run(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        let me = Arc::new(self);
        let gate = Arc::new(tokio::sync::Semaphore::new(1));
        loop {
            let (stream, _) = listener.accept().await?;
            let (me, gate) = (me.clone(), gate.clone());
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let svc = hyper::service::service_fn(move |req| {
                    let (me, gate) = (me.clone(), gate.clone());
                    async move {
                        let _permit = gate.acquire_owned().await;
                        me.handle(req).await
                    }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await {
                    eprintln!("serve: connection error: {e}");
                }
            });
        }
    }
}
