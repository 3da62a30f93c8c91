//! `mstar serve DIR`: an OpenAI-compatible chat-completions server over a local Qwen-VL
//! checkpoint (POST /v1/chat/completions, GET /v1/models). Requests compute one at a time.
//!
//! One client must not take the server down, so a request goes through three phases:
//! 1. reading: the body, at most `max_body_bytes` (413 past it, without reading the rest) and
//!    within `read_timeout` (408), concurrently with everything else;
//! 2. preparing, a few requests at a time: the JSON, the limits on `n`, images (count, and
//!    pixels read from each image's header before decoding it) and prompt tokens (400 past
//!    them), the images' decoding and the tokenization;
//! 3. computing, one at a time, in arrival order (see `Server::compute`).
//!
//! `GET /v1/models` answers at once whatever is computing. Headers, and the next request on a
//! kept-alive connection, must arrive within `read_timeout` too (hyper's header read timeout).

use super::{template_messages, ChatRequest};
use crate::model::generate::SamplingParams;
use crate::model::qwen2_5_vl::generate::{generate, Prompt};
use crate::model::qwen_vl::Checkpoint;
use bytes::Bytes;
use candle_core::Tensor;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// What one request may ask for; past a limit the request gets a 4xx that names the limit.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body (413).
    pub max_body_bytes: usize,
    /// Most prompt tokens, image tokens included (400); `None`: the model's context
    /// (config.json's `max_position_embeddings`), no limit if the folder does not say.
    pub max_prompt_tokens: Option<usize>,
    /// Most images in one request (400).
    pub max_images: usize,
    /// Most pixels (width × height, from the image's header) of one image (400).
    pub max_image_pixels: u64,
    /// Most choices (`n`) in one request (400).
    pub max_n: u32,
    /// Time a client has to send a request's headers, its body, or, on a kept-alive
    /// connection, the next request; then the connection is closed (408 for a body).
    pub read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 << 20,
            max_prompt_tokens: None,
            max_images: 8,
            max_image_pixels: 50_000_000,
            max_n: 16,
            read_timeout: Duration::from_secs(30),
        }
    }
}

/// A request that failed: its status and message.
type Reject = (StatusCode, String);

/// A validated request, ready to compute.
pub struct Prepared {
    ids: Vec<u32>,
    values: Vec<f32>,
    grids: Vec<[usize; 3]>,
    params: SamplingParams,
    seed: u64,
    n: u32,
    logprobs: bool,
}

pub struct Server {
    ck: Checkpoint,
    name: String,
    eos: Vec<u32>,
    device: candle_core::Device,
    limits: Limits,
    /// The model's context (config.json's `max_position_embeddings`), when the folder says.
    context: Option<usize>,
    /// One computation at a time (tokio's Mutex is fair: waiters get it in FIFO order).
    compute: Arc<tokio::sync::Mutex<()>>,
    /// A few requests prepared at a time (the semaphore is fair too), to bound the memory
    /// that large bodies take while they are parsed, decoded and tokenized.
    preparing: Arc<tokio::sync::Semaphore>,
    /// Test hook: the process exits when a chat request arrives after this many.
    exit_after: Option<usize>,
    /// Chat requests received.
    received: std::sync::atomic::AtomicUsize,
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    Response::builder().status(status).header("content-type", "application/json").body(Full::new(Bytes::from(body.to_string()))).expect("valid response")
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response<Full<Bytes>> {
    reply(status, json!({"error": {"message": msg.into(), "type": if status.is_client_error() { "invalid_request_error" } else { "server_error" }}}))
}

/// An error after which the connection closes (its request body was not read to the end).
fn error_and_close(status: StatusCode, msg: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = error(status, msg);
    r.headers_mut().insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("close"));
    r
}

/// The seed of choice j of a request seeded with `seed`: the seed itself for the first.
pub fn choice_seed(seed: u64, j: u32) -> u64 {
    if j == 0 {
        seed
    } else {
        crate::model::generate::rollout_seed(seed, 0, "choice", j)
    }
}

/// The context length of the checkpoint folder `dir`: config.json's `max_position_embeddings`
/// (of `text_config`, else at the top level).
pub fn context_length(dir: &Path) -> Option<usize> {
    let v: Value = serde_json::from_slice(&std::fs::read(dir.join("config.json")).ok()?).ok()?;
    let get = |v: &Value| v.get("max_position_embeddings").and_then(Value::as_u64);
    v.get("text_config").and_then(get).or_else(|| get(&v)).map(|n| n as usize)
}

/// The image parts of OpenAI messages, counted without decoding them.
fn count_images(messages: &[Value]) -> usize {
    messages
        .iter()
        .filter_map(|m| m.get("content").and_then(Value::as_array))
        .flatten()
        .filter(|p| p.get("type").and_then(Value::as_str) == Some("image_url"))
        .count()
}

fn mib(bytes: usize) -> String {
    let m = bytes as f64 / (1 << 20) as f64;
    if m.fract() == 0.0 {
        format!("{m} MiB")
    } else {
        format!("{m:.2} MiB")
    }
}

impl Server {
    /// A server with the default limits (see `with_limits`).
    pub fn new(ck: Checkpoint, name: String, eos: Vec<u32>, device: candle_core::Device) -> Self {
        let context = context_length(&ck.dir);
        let parallel = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 4);
        Self {
            ck,
            name,
            eos,
            device,
            limits: Limits::default(),
            context,
            compute: Arc::new(tokio::sync::Mutex::new(())),
            preparing: Arc::new(tokio::sync::Semaphore::new(parallel)),
            exit_after: None,
            received: Default::default(),
        }
    }

    /// The crash tests' fault (`MSTAR_FAULT_SERVE_EXIT_AFTER=N`): the server takes N chat
    /// requests, then exits with status 3 when the next one arrives, dropping every connection
    /// and the requests still in flight, as a crashed server would.
    pub fn with_exit_after(mut self, n: Option<usize>) -> Self {
        self.exit_after = n;
        self
    }

    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The prompt-token limit in force: the configured one, else the model's context.
    pub fn max_prompt_tokens(&self) -> Option<usize> {
        self.limits.max_prompt_tokens.or(self.context)
    }

    /// Answers one chat-completions request body (`prepare`, then `compute`).
    pub fn complete(&self, body: &[u8]) -> Result<Value, Reject> {
        self.compute(self.prepare(body)?)
    }

    /// Parses and checks a request body against the limits, decodes its images and tokenizes
    /// its prompt: everything but the model.
    pub fn prepare(&self, body: &[u8]) -> Result<Prepared, Reject> {
        let bad = |m: String| (StatusCode::BAD_REQUEST, m);
        let lim = &self.limits;
        let req: ChatRequest = serde_json::from_slice(body).map_err(|e| bad(format!("request body: {e}")))?;
        if req.stream == Some(true) {
            return Err(bad("stream: true is not supported".into()));
        }
        let n = req.n.unwrap_or(1).max(1);
        if n > lim.max_n {
            return Err(bad(format!("n = {n} exceeds the limit of {} choices a request (--max-n)", lim.max_n)));
        }
        let mut params = SamplingParams {
            temperature: req.temperature.unwrap_or(1.0),
            top_p: req.top_p.unwrap_or(1.0),
            top_k: req.top_k.filter(|&k| k > 0).unwrap_or(0) as usize,
            max_new_tokens: req.max_completion_tokens.or(req.max_tokens).unwrap_or(256),
        };
        if !(params.temperature >= 0.0 && params.top_p > 0.0 && params.top_p <= 1.0) {
            return Err(bad("temperature must be ≥ 0 and top_p in (0, 1]".into()));
        }
        let count = count_images(&req.messages);
        if count > lim.max_images {
            return Err(bad(format!("{count} images exceed the limit of {} images a request (--max-images)", lim.max_images)));
        }
        let (messages, images) = template_messages(&req.messages).map_err(|e| bad(e.to_string()))?;
        let ck = &self.ck;
        let mut values = Vec::new();
        let mut grids = Vec::new();
        for (i, b) in images.iter().enumerate() {
            let reader = || image::ImageReader::new(std::io::Cursor::new(b)).with_guessed_format().map_err(|e| bad(format!("image {i}: {e}")));
            // the size from the header, before anything is decoded
            let (w, h) = reader()?.into_dimensions().map_err(|e| bad(format!("image {i}: undecodable image: {e}")))?;
            if w as u64 * h as u64 > lim.max_image_pixels {
                return Err(bad(format!(
                    "image {i}: {w}×{h} = {} pixels exceeds the limit of {} pixels an image (--max-image-pixels)",
                    w as u64 * h as u64,
                    lim.max_image_pixels
                )));
            }
            let mut reader = reader()?;
            // a decoder that finds other dimensions than the header's stops
            let mut il = image::Limits::default();
            il.max_image_width = Some(w);
            il.max_image_height = Some(h);
            reader.limits(il);
            let img = reader.decode().map_err(|e| bad(format!("image {i}: undecodable image: {e}")))?;
            // PIL's convert("RGB"), as ImageProcessor::preprocess_bytes
            let rgb = img.to_rgb8();
            drop(img);
            let p = ck.processor.preprocess_rgb8(rgb.as_raw(), rgb.width() as usize, rgb.height() as usize).map_err(|e| bad(format!("image {i}: {e}")))?;
            grids.push(p.grid);
            values.extend(p.values);
        }
        let text = ck.chat.render(&messages, true).map_err(|e| bad(e.to_string()))?;
        let text = ck.expand_image_pads(&text, &grids).map_err(|e| bad(e.to_string()))?;
        let ids = self.encode_bounded(&text)?;
        if let Some(ctx) = self.context {
            // generation stops at the end of the model's context
            params.max_new_tokens = params.max_new_tokens.min(ctx.saturating_sub(ids.len()).max(1));
        }
        let seed = req.seed.unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0));
        Ok(Prepared { ids, values, grids, params, seed, n, logprobs: req.logprobs == Some(true) })
    }

    /// The prompt's token ids, or a 400 when there are more than `max_prompt_tokens`. A long
    /// text is first tokenized by growing prefixes (8 bytes a token allowed, then 4 times more
    /// each round), cut at whitespace: a huge prompt is refused from its start, without the
    /// memory that tokenizing all of it takes (about 200 bytes a byte of text).
    fn encode_bounded(&self, text: &str) -> Result<Vec<u32>, Reject> {
        let bad = |m: String| (StatusCode::BAD_REQUEST, m);
        let Some(max) = self.max_prompt_tokens() else {
            return self.ck.encode(text).map_err(|e| bad(e.to_string()));
        };
        let why = if self.limits.max_prompt_tokens.is_some() { "--max-prompt-tokens" } else { "the model's context, max_position_embeddings" };
        let too_many = |n: String| bad(format!("the prompt has {n} tokens (images included), more than the limit of {max} prompt tokens ({why})"));
        let mut len = max.saturating_mul(8).max(4096);
        while len < text.len() {
            let mut cut = len;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            // before a space, so the last word is whole (when there is a space late enough)
            if let Some(ws) = text[..cut].rfind(char::is_whitespace).filter(|&ws| ws > cut / 2) {
                cut = ws;
            }
            let n = self.ck.encode(&text[..cut]).map_err(|e| bad(e.to_string()))?.len();
            // (a little slack for a word cut in two)
            if n > max + 8 {
                return Err(too_many(format!("at least {n}")));
            }
            len = len.saturating_mul(4);
        }
        let ids = self.ck.encode(text).map_err(|e| bad(e.to_string()))?;
        if ids.len() > max {
            return Err(too_many(ids.len().to_string()));
        }
        Ok(ids)
    }

    /// Generates the choices of a prepared request. `run` calls it under the compute lock.
    pub fn compute(&self, p: Prepared) -> Result<Value, Reject> {
        let ck = &self.ck;
        let Prepared { ids, values, grids, params, seed, n, logprobs } = p;
        let internal = |e: String| (StatusCode::INTERNAL_SERVER_ERROR, e);
        let pixels = if grids.is_empty() {
            None
        } else {
            let cols = 3 * ck.processor.temporal_patch_size * ck.processor.patch_size * ck.processor.patch_size;
            let rows = values.len() / cols;
            Some(Tensor::from_vec(values, (rows, cols), &self.device).map_err(|e| internal(e.to_string()))?)
        };
        let seeds: Vec<u64> = (0..n).map(|j| choice_seed(seed, j)).collect();
        let prompt_tokens = ids.len();
        let gens = generate(&ck.model, &Prompt { ids, pixels, grids }, &seeds, &params, &self.eos).map_err(|e| internal(e.to_string()))?;
        let mut completion = 0;
        let choices: Vec<Value> = gens
            .iter()
            .enumerate()
            .map(|(j, g)| {
                completion += g.tokens.len();
                let text = ck.tokenizer.decode(&g.tokens, true).unwrap_or_default();
                let mut c = json!({"index": j, "message": {"role": "assistant", "content": text}, "finish_reason": g.finish_reason});
                if logprobs {
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

    /// The request body, read up to the body limit and within the read timeout; or the
    /// response that says why not (the connection then closes).
    async fn read_body(&self, body: hyper::body::Incoming) -> Result<Bytes, Response<Full<Bytes>>> {
        let max = self.limits.max_body_bytes;
        let too_large = |len: Option<u64>| {
            let len = len.map(|l| format!(" of {l} bytes")).unwrap_or_default();
            error_and_close(StatusCode::PAYLOAD_TOO_LARGE, format!("request body{len} exceeds the limit of {} ({max} bytes; --max-body-mb)", mib(max)))
        };
        // a Content-Length past the limit: refused before reading any of it
        if body.size_hint().lower() > max as u64 {
            return Err(too_large(Some(body.size_hint().lower())));
        }
        let secs = self.limits.read_timeout.as_secs_f64();
        match tokio::time::timeout(self.limits.read_timeout, Limited::new(body, max).collect()).await {
            Ok(Ok(c)) => Ok(c.to_bytes()),
            Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(too_large(None)),
            Ok(Err(e)) => Err(error_and_close(StatusCode::BAD_REQUEST, format!("reading the request body: {e}"))),
            Err(_) => Err(error_and_close(
                StatusCode::REQUEST_TIMEOUT,
                format!("the request body did not arrive within the read timeout of {secs} s (--read-timeout-secs)"),
            )),
        }
    }

    async fn chat(self: Arc<Self>, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let nth = self.received.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.exit_after.is_some_and(|n| nth >= n) {
            eprintln!("mstar serve: exiting at request {} (MSTAR_FAULT_SERVE_EXIT_AFTER)", nth + 1);
            std::process::exit(3);
        }
        let body = match self.read_body(req.into_body()).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let permit = self.preparing.clone().acquire_owned().await.expect("the semaphore is never closed");
        let me = self.clone();
        let prepared = match tokio::task::spawn_blocking(move || {
            let _permit = permit;
            me.prepare(&body)
        })
        .await
        {
            Ok(Ok(p)) => p,
            Ok(Err((status, msg))) => return error(status, msg),
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
        // One computation at a time. tokio's Mutex is fair (FIFO): prepared requests are
        // answered in the order they queued, none starves. The guard moves into the blocking
        // task, so the lock is held until the model is done even if the client has gone.
        let guard = self.compute.clone().lock_owned().await;
        let me = self.clone();
        match tokio::task::spawn_blocking(move || {
            let _guard = guard;
            me.compute(prepared)
        })
        .await
        {
            Ok(Ok(v)) => reply(StatusCode::OK, v),
            Ok(Err((status, msg))) => error(status, msg),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }

    async fn handle(self: Arc<Self>, req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
        let (method, path) = (req.method().clone(), req.uri().path().to_string());
        Ok(match (method, path.as_str()) {
            (Method::GET, "/v1/models") => {
                reply(StatusCode::OK, json!({"object": "list", "data": [{"id": self.name, "object": "model", "owned_by": "mstar"}]}))
            }
            (Method::POST, "/v1/chat/completions") => self.chat(req).await,
            (_, "/v1/models" | "/v1/chat/completions") => error(StatusCode::METHOD_NOT_ALLOWED, format!("{} does not take {}", path, req.method())),
            _ => error(StatusCode::NOT_FOUND, format!("no route {path} (POST /v1/chat/completions, GET /v1/models)")),
        })
    }

    /// Serves on `listener` until the process ends; one request computes at a time.
    pub async fn run(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        let me = Arc::new(self);
        let read_timeout = me.limits.read_timeout;
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    // e.g. out of file descriptors: wait for connections to close, keep serving
                    eprintln!("serve: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let me = me.clone();
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let svc = hyper::service::service_fn(move |req| me.clone().handle(req));
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(read_timeout)
                    .serve_connection(io, svc);
                if let Err(e) = conn.await {
                    eprintln!("serve: connection error: {e}");
                }
            });
        }
    }
}
