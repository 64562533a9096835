//! Server-sent events as the worker (and OpenAI) send them: `data: <payload>` lines, events
//! separated by a blank line, the stream closed by `data: [DONE]`.

/// Splits a byte stream into complete events; bytes of an unfinished event wait for the next
/// push.
#[derive(Default)]
pub struct SseReader {
    buf: Vec<u8>,
}

impl SseReader {
    /// Add bytes; return the `data` payloads of every event now complete (the raw event text is
    /// returned alongside, for passing through unchanged).
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Event> {
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = find_boundary(&self.buf) {
            let raw: Vec<u8> = self.buf.drain(..end.0 + end.1).collect();
            let text = String::from_utf8_lossy(&raw[..end.0]).into_owned();
            let data: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:").map(|d| d.strip_prefix(' ').unwrap_or(d)))
                .collect();
            if !data.is_empty() {
                events.push(Event { data: data.join("\n"), raw });
            }
        }
        events
    }
}

/// One complete event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The `data` payload (lines joined by `\n`).
    pub data: String,
    /// The event exactly as received, separator included.
    pub raw: Vec<u8>,
}

impl Event {
    /// Whether this is the end-of-stream marker.
    pub fn is_done(&self) -> bool {
        self.data.trim() == "[DONE]"
    }
}

/// Whether an HTTP answer is an event stream.
pub fn is_event_stream(resp: &reqwest::Response) -> bool {
    resp.headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// Position and length of the first event separator (`\n\n` or `\r\n\r\n`).
fn find_boundary(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2));
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| (p, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_pushes() {
        let mut r = SseReader::default();
        assert!(r.push(b"data: {\"a\":").is_empty());
        let ev = r.push(b"1}\n\ndata: [DO");
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].data, "{\"a\":1}");
        assert_eq!(ev[0].raw, b"data: {\"a\":1}\n\n");
        let ev = r.push(b"NE]\n\n");
        assert!(ev[0].is_done());
    }

    #[test]
    fn comments_and_crlf() {
        let mut r = SseReader::default();
        let ev = r.push(b": keep-alive\n\ndata: x\r\n\r\ndata: y\ndata: z\n\n");
        assert_eq!(ev.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(), ["x", "y\nz"]);
    }
}
