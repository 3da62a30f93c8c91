//! Several OpenAI-compatible endpoints serving one model, used as one: a request goes to the
//! endpoint with the fewest outstanding requests, and an endpoint that fails leaves the rotation.
//!
//! An endpoint that fails (connection refused or reset, timeout, 5xx, a body cut short) is out
//! of rotation for its backoff (its `Retry-After`, else 1 s, doubled at each failed probe up to
//! 60 s); then one request probes it, and a success puts it back. The request that failed is
//! sent to another endpoint it has not failed on, and that does not count as one of its
//! attempts; only when no such endpoint is in rotation does the failure count, and the request
//! waits its backoff (0.5 s, 1 s, 2 s, …) and tries the endpoint that comes back first — with
//! one endpoint, exactly the single client's retries.

use super::client::{Client, Failure, Fault, FaultKind};
use super::{ChatRequest, Choice};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// First time out of rotation, when the endpoint gives no `Retry-After`.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest time out of rotation (backoff and `Retry-After` alike).
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Why an endpoint is out of rotation, and until when.
#[derive(Debug, Clone)]
struct Down {
    until: Instant,
    backoff: Duration,
    /// A request is probing it now.
    probing: bool,
}

#[derive(Debug, Clone, Default)]
struct Health {
    outstanding: usize,
    down: Option<Down>,
}

/// The endpoint a request was sent to, and whether it is that endpoint's probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    pub endpoint: usize,
    pub probe: bool,
}

/// Which endpoint gets the next request (no I/O, the time given: unit-testable).
#[derive(Debug, Clone)]
pub struct Picker {
    eps: Vec<Health>,
}

impl Picker {
    pub fn new(endpoints: usize) -> Self {
        Self { eps: vec![Health::default(); endpoints] }
    }

    /// Requests in flight at endpoint `i`.
    pub fn outstanding(&self, i: usize) -> usize {
        self.eps[i].outstanding
    }

    /// Whether endpoint `i` is in rotation.
    pub fn in_rotation(&self, i: usize) -> bool {
        self.eps[i].down.is_none()
    }

    /// The endpoint for a request that has already failed on those `avoid` marks: an endpoint
    /// out of rotation whose wait is over and that nobody probes (the request probes it), else
    /// the endpoint in rotation with the fewest outstanding requests (the first on a tie); None
    /// when every endpoint is out of rotation or avoided.
    pub fn pick(&mut self, now: Instant, avoid: &[bool]) -> Option<Ticket> {
        let ok = |i: &usize| !avoid.get(*i).copied().unwrap_or(false);
        let probe = (0..self.eps.len()).filter(ok).find(|&i| self.eps[i].down.as_ref().is_some_and(|d| !d.probing && d.until <= now));
        let t = match probe {
            Some(i) => {
                self.eps[i].down.as_mut().expect("down").probing = true;
                Ticket { endpoint: i, probe: true }
            }
            None => {
                let i = (0..self.eps.len()).filter(ok).filter(|&i| self.eps[i].down.is_none()).min_by_key(|&i| (self.eps[i].outstanding, i))?;
                Ticket { endpoint: i, probe: false }
            }
        };
        self.eps[t.endpoint].outstanding += 1;
        Some(t)
    }

    /// The endpoint that comes back first (every endpoint is out of rotation or avoided): a
    /// request that has waited its own backoff tries it anyway.
    pub fn pick_any(&mut self, now: Instant) -> Ticket {
        let until = |h: &Health| h.down.as_ref().map_or(now, |d| d.until);
        let i = (0..self.eps.len()).min_by_key(|&i| (until(&self.eps[i]), self.eps[i].outstanding, i)).expect("at least one endpoint");
        let probe = match self.eps[i].down.as_mut() {
            Some(d) if !d.probing => {
                d.probing = true;
                true
            }
            _ => false,
        };
        self.eps[i].outstanding += 1;
        Ticket { endpoint: i, probe }
    }

    /// The endpoint answered (a completion, or a refusal that shows it is up): back in
    /// rotation if it was out. Returns whether it came back.
    pub fn answered(&mut self, t: Ticket) -> bool {
        let h = &mut self.eps[t.endpoint];
        h.outstanding = h.outstanding.saturating_sub(1);
        h.down.take().is_some()
    }

    /// The endpoint failed: out of rotation until `now` + its backoff (`retry_after` if the
    /// endpoint gave one), doubled when the failed request was its probe. A request sent before
    /// it left the rotation changes nothing more. Returns how long it is out when it has just
    /// left the rotation (None when it already was out).
    pub fn failed(&mut self, t: Ticket, now: Instant, retry_after: Option<Duration>) -> Option<Duration> {
        let h = &mut self.eps[t.endpoint];
        h.outstanding = h.outstanding.saturating_sub(1);
        let backoff = match &h.down {
            None => FIRST_BACKOFF,
            Some(d) if t.probe => (d.backoff * 2).min(MAX_BACKOFF),
            Some(_) => return None,
        };
        let wait = retry_after.unwrap_or(backoff).min(MAX_BACKOFF);
        let fresh = h.down.is_none();
        h.down = Some(Down { until: now + wait, backoff, probing: false });
        fresh.then_some(wait)
    }

    /// The request was dropped before an answer: its slot is free again.
    pub fn abandoned(&mut self, t: Ticket) {
        let h = &mut self.eps[t.endpoint];
        h.outstanding = h.outstanding.saturating_sub(1);
        if let Some(d) = h.down.as_mut().filter(|_| t.probe) {
            d.probing = false;
        }
    }

    /// Whether some endpoint not in `avoid` is in rotation.
    pub fn any_in_rotation(&self, avoid: &[bool]) -> bool {
        (0..self.eps.len()).any(|i| self.eps[i].down.is_none() && !avoid.get(i).copied().unwrap_or(false))
    }
}

/// Endpoints of one model and the picker that spreads requests over them.
pub struct Pool {
    clients: Vec<Client>,
    picker: Mutex<Picker>,
    retries: u32,
}

/// A request's slot at an endpoint, given back if the request is dropped mid-flight.
struct Slot<'a> {
    pool: &'a Pool,
    ticket: Option<Ticket>,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.ticket.take() {
            self.pool.picker().abandoned(t);
        }
    }
}

impl Pool {
    /// A pool of `clients` (at least one); a request's failures count up to `retries` + 1.
    pub fn new(clients: Vec<Client>, retries: u32) -> Self {
        assert!(!clients.is_empty(), "a pool needs an endpoint");
        let picker = Mutex::new(Picker::new(clients.len()));
        Self { clients, picker, retries }
    }

    fn picker(&self) -> std::sync::MutexGuard<'_, Picker> {
        self.picker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `req` to the pool: see the module's documentation for where and how often.
    pub async fn complete(&self, req: &ChatRequest) -> Result<Vec<Choice>, Failure> {
        let n = self.clients.len();
        let (mut counted, mut tried) = (0u32, vec![false; n]);
        loop {
            let ticket = {
                let mut p = self.picker();
                let now = Instant::now();
                p.pick(now, &tried).unwrap_or_else(|| p.pick_any(now))
            };
            let mut slot = Slot { pool: self, ticket: Some(ticket) };
            let client = &self.clients[ticket.endpoint];
            let result = client.send(req).await;
            slot.ticket = None;
            let fault = match result {
                Ok(choices) => {
                    if self.picker().answered(ticket) && n > 1 {
                        eprintln!("  openai: {} is back in rotation", client.url());
                    }
                    return Ok(choices);
                }
                Err(f) => f,
            };
            let Fault { kind, error, retry_after } = fault;
            let free = {
                let mut p = self.picker();
                if kind == FaultKind::Endpoint {
                    if let Some(wait) = p.failed(ticket, Instant::now(), retry_after) {
                        if n > 1 {
                            eprintln!("  openai: {} out of rotation for {:.0} s: {error}", client.url(), wait.as_secs_f64());
                        }
                    }
                    tried[ticket.endpoint] = true;
                    p.any_in_rotation(&tried)
                } else {
                    p.answered(ticket);
                    false
                }
            };
            if kind == FaultKind::Final {
                return Err(Failure { error, attempts: counted + 1 });
            }
            if free {
                continue;
            }
            counted += 1;
            if counted > self.retries {
                return Err(Failure { error, attempts: counted });
            }
            tried.fill(false);
            tokio::time::sleep(Duration::from_millis(500 << (counted - 1).min(6))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn requests_go_to_the_least_outstanding_endpoint() {
        let now = Instant::now();
        let mut p = Picker::new(3);
        let picks: Vec<usize> = (0..6).map(|_| p.pick(now, &[]).unwrap().endpoint).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        // endpoint 1 answers twice: the next two go there
        p.answered(Ticket { endpoint: 1, probe: false });
        p.answered(Ticket { endpoint: 1, probe: false });
        assert_eq!(p.pick(now, &[]).unwrap().endpoint, 1);
        assert_eq!(p.pick(now, &[]).unwrap().endpoint, 1);
        assert_eq!((p.outstanding(0), p.outstanding(1), p.outstanding(2)), (2, 2, 2));
        // an avoided endpoint is skipped even when it is the least loaded
        p.answered(Ticket { endpoint: 0, probe: false });
        assert_eq!(p.pick(now, &[true, false, false]).unwrap().endpoint, 1);
    }

    #[test]
    fn a_failed_endpoint_leaves_the_rotation_and_a_probe_brings_it_back() {
        let t0 = Instant::now();
        let mut p = Picker::new(2);
        let a = p.pick(t0, &[]).unwrap();
        let b = p.pick(t0, &[]).unwrap();
        assert_eq!((a.endpoint, b.endpoint), (0, 1));
        assert_eq!(p.failed(a, t0, None), Some(S));
        assert!(!p.in_rotation(0) && p.any_in_rotation(&[]) && !p.any_in_rotation(&[false, true]));
        // out of rotation for its backoff: everything goes to 1, even with 0 idle
        for _ in 0..3 {
            assert_eq!(p.pick(t0 + S / 2, &[]).unwrap().endpoint, 1);
        }
        // a request it had failed on, avoiding 1 too: nothing in rotation
        assert_eq!(p.pick(t0, &[false, true]), None);
        // the wait is over: one request probes it, the others still go to 1
        let probe = p.pick(t0 + S, &[]).unwrap();
        assert_eq!(probe, Ticket { endpoint: 0, probe: true });
        assert_eq!(p.pick(t0 + S, &[]).unwrap().endpoint, 1);
        // the probe fails: out again, for twice as long
        assert_eq!(p.failed(probe, t0 + S, None), None);
        assert_eq!(p.pick(t0 + S * 2, &[]).unwrap().endpoint, 1);
        let probe = p.pick(t0 + S * 3, &[]).unwrap();
        assert_eq!(probe, Ticket { endpoint: 0, probe: true });
        // it answers: back in rotation, and the least loaded gets the next request
        assert!(p.answered(probe));
        assert!(p.in_rotation(0));
        assert_eq!(p.pick(t0 + S * 3, &[]).unwrap().endpoint, 0);
    }

    #[test]
    fn late_failures_and_retry_after_set_the_wait() {
        let t0 = Instant::now();
        let mut p = Picker::new(2);
        let (a1, a2) = (p.pick(t0, &[]).unwrap(), p.pick(t0, &[]).unwrap());
        let a3 = p.pick(t0, &[]).unwrap();
        assert_eq!((a1.endpoint, a2.endpoint, a3.endpoint), (0, 1, 0));
        // the endpoint asks for 5 s; a second request that was already in flight fails too:
        // the wait stays
        assert_eq!(p.failed(a1, t0, Some(S * 5)), Some(S * 5));
        assert_eq!(p.failed(a3, t0 + S, None), None);
        assert_eq!(p.pick(t0 + S * 4, &[]).unwrap().endpoint, 1);
        assert!(p.pick(t0 + S * 5, &[]).unwrap().probe);
        // a Retry-After past the longest wait is cut to it
        let mut p = Picker::new(1);
        let t = p.pick(t0, &[]).unwrap();
        assert_eq!(p.failed(t, t0, Some(S * 3600)), Some(MAX_BACKOFF));
    }

    #[test]
    fn with_every_endpoint_out_a_request_tries_the_first_to_come_back() {
        let t0 = Instant::now();
        let mut p = Picker::new(2);
        let (a, b) = (p.pick(t0, &[]).unwrap(), p.pick(t0, &[]).unwrap());
        p.failed(b, t0, None);
        p.failed(a, t0 + S / 2, None);
        assert_eq!(p.pick(t0 + S / 2, &[]), None);
        assert_eq!(p.pick_any(t0 + S / 2), Ticket { endpoint: 1, probe: true });
        // a dropped probe lets the next request probe
        p.abandoned(Ticket { endpoint: 1, probe: true });
        assert_eq!(p.pick(t0 + S * 2, &[]).unwrap(), Ticket { endpoint: 0, probe: true });
        assert_eq!(p.pick(t0 + S * 2, &[]).unwrap(), Ticket { endpoint: 1, probe: true });
        assert_eq!((p.outstanding(0), p.outstanding(1)), (1, 1));
    }

    /// A one-connection HTTP server that answers every request with `status` and `body`;
    /// returns its base URL and a counter of the requests it read.
    async fn canned(status: u16, body: &'static str) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        canned_on(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), status, body)
    }

    /// `canned` on a given listener.
    fn canned_on(listener: tokio::net::TcpListener, status: u16, body: &'static str) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = listener.local_addr().unwrap();
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = count.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // headers, then the body by its Content-Length
                loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap()))
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let resp =
                    format!("HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        (format!("http://{addr}/v1"), count)
    }

    fn request() -> ChatRequest {
        serde_json::from_value(serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})).unwrap()
    }

    fn client(url: &str) -> Client {
        Client::new(url, None, Duration::from_secs(5)).unwrap()
    }

    #[tokio::test]
    async fn a_failing_endpoint_costs_no_attempt_while_another_answers() {
        let ok = r#"{"choices": [{"message": {"content": "fine"}, "finish_reason": "stop"}]}"#;
        let (good, served) = canned(200, ok).await;
        let (broken, failed) = canned(503, r#"{"error": {"message": "overloaded"}}"#).await;
        // a port nobody listens on
        let closed = { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap() };
        let pool = Pool::new(vec![client(&format!("http://{closed}/v1")), client(&broken), client(&good)], 0);
        // retries 0: the first request fails on two endpoints and still succeeds
        for _ in 0..3 {
            let c = pool.complete(&request()).await.unwrap();
            assert_eq!(c[0].text, "fine");
        }
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 3);
        // the 503 endpoint was tried once, then left out
        assert_eq!(failed.load(std::sync::atomic::Ordering::SeqCst), 1);
        let p = pool.picker();
        assert!(!p.in_rotation(0) && !p.in_rotation(1) && p.in_rotation(2));
        assert_eq!((p.outstanding(0), p.outstanding(1), p.outstanding(2)), (0, 0, 0));
    }

    #[tokio::test]
    async fn an_endpoint_that_comes_back_is_probed_back_into_rotation() {
        let ok = r#"{"choices": [{"message": {"content": "fine"}, "finish_reason": "stop"}]}"#;
        let (good, _) = canned(200, ok).await;
        // a port nobody listens on yet
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let pool = Pool::new(vec![client(&format!("http://{addr}/v1")), client(&good)], 0);
        pool.complete(&request()).await.unwrap();
        assert!(!pool.picker().in_rotation(0));
        // it starts answering; once its backoff is over, a request probes it
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let (back, count) = canned_on(listener, 200, ok);
        assert_eq!(back, format!("http://{addr}/v1"));
        tokio::time::sleep(FIRST_BACKOFF + Duration::from_millis(100)).await;
        pool.complete(&request()).await.unwrap();
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(pool.picker().in_rotation(0));
    }

    #[tokio::test]
    async fn with_every_endpoint_down_the_request_fails_after_its_retries() {
        let (broken, count) = canned(500, r#"{"error": {"message": "boom"}}"#).await;
        let (refused, refusals) = canned(400, r#"{"error": {"message": "bad image"}}"#).await;
        let pool = Pool::new(vec![client(&broken)], 1);
        let f = pool.complete(&request()).await.unwrap_err();
        assert_eq!((f.attempts, f.error.as_str()), (2, "HTTP 500 Internal Server Error: boom"));
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 2);
        // a refused request fails at once, wherever it goes
        let pool = Pool::new(vec![client(&refused), client(&broken)], 3);
        let f = pool.complete(&request()).await.unwrap_err();
        assert_eq!((f.attempts, f.error.as_str()), (1, "HTTP 400 Bad Request: bad image"));
        assert_eq!(refusals.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
