//! Server-sent events from a backend, reassembled from reads that may cut a line (or a UTF-8
//! character) anywhere. The one parser for everything Corral reads out of a stream: the request
//! log's token counts and the Ollama translation.

/// An event (or a line) grew past the parser's limit; the parser dropped what it held.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the backend sent a stream event larger than {limit} bytes")]
pub struct EventTooLarge {
    pub limit: usize,
}

/// Reads `data` of events, the only field an OpenAI-style stream uses; `event:`, `id:`,
/// `retry:` and `:` comments (MLX's `: keepalive`) carry nothing Corral uses.
#[derive(Debug)]
pub struct SseParser {
    /// Bytes after the last complete line.
    pending: Vec<u8>,
    /// `data:` lines of the event being read, joined by `\n`.
    data: Option<Vec<u8>>,
    /// The most either may hold, so a backend that never ends a line cannot grow Corral's
    /// memory without bound.
    limit: usize,
    /// What is left of an event that went past the limit, skipped.
    skipping: Skip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skip {
    Nothing,
    /// The rest of the event, up to its blank line.
    Event,
    /// The rest of a line cut by the limit, then the rest of its event.
    LineThenEvent,
}

impl SseParser {
    pub fn new(limit: usize) -> Self {
        Self {
            pending: Vec::new(),
            data: None,
            limit,
            skipping: Skip::Nothing,
        }
    }

    /// Calls `event` with the data of every event completed by `bytes`, in order. An event past
    /// the limit is dropped whole, and said so once; the caller decides whether the stream is
    /// worth reading on.
    pub fn push(
        &mut self,
        bytes: &[u8],
        mut event: impl FnMut(&[u8]),
    ) -> Result<(), EventTooLarge> {
        self.pending.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(offset) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let end = start + offset;
            let line = &self.pending[start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            match self.skipping {
                Skip::Nothing => line_into(&mut self.data, line, &mut event),
                Skip::LineThenEvent => self.skipping = Skip::Event,
                Skip::Event if line.is_empty() => self.skipping = Skip::Nothing,
                Skip::Event => {}
            }
            start = end + 1;
        }
        self.pending.drain(..start);
        let held = self.pending.len() + self.data.as_ref().map_or(0, Vec::len);
        if held > self.limit {
            self.skipping = if self.pending.is_empty() {
                Skip::Event
            } else {
                Skip::LineThenEvent
            };
            self.pending = Vec::new();
            self.data = None;
            return Err(EventTooLarge { limit: self.limit });
        }
        Ok(())
    }

    /// The last event, when the stream ended without the blank line that closes it.
    pub fn finish(&mut self, mut event: impl FnMut(&[u8])) {
        let rest = std::mem::take(&mut self.pending);
        if self.skipping != Skip::Nothing {
            self.skipping = Skip::Nothing;
            self.data = None;
            return;
        }
        if !rest.is_empty() {
            // `rest` holds no newline, so this only adds to the event's data.
            let line = rest.strip_suffix(b"\r").unwrap_or(&rest);
            line_into(&mut self.data, line, &mut |_| {});
        }
        if let Some(data) = self.data.take() {
            event(&data);
        }
    }

    /// Bytes held for an incomplete line or event.
    pub fn buffered(&self) -> usize {
        self.pending.len() + self.data.as_ref().map_or(0, Vec::len)
    }
}

fn line_into(data: &mut Option<Vec<u8>>, line: &[u8], event: &mut impl FnMut(&[u8])) {
    if line.is_empty() {
        if let Some(done) = data.take() {
            event(&done);
        }
    } else if let Some(value) = line.strip_prefix(b"data:") {
        let value = value.strip_prefix(b" ").unwrap_or(value);
        match data {
            Some(data) => {
                data.push(b'\n');
                data.extend_from_slice(value);
            }
            None => *data = Some(value.to_vec()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    fn events(parser: &mut SseParser, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        parser
            .push(bytes, |data| {
                out.push(String::from_utf8_lossy(data).into_owned())
            })
            .unwrap();
        out
    }

    #[test]
    fn events_come_whole_however_the_reads_cut_them() {
        let stream = ": keepalive\n\ndata: {\"a\":1}\r\n\r\nevent: x\ndata: one\ndata: two\n\ndata: [DONE]\n\n";
        let whole = events(&mut SseParser::new(1024), stream.as_bytes());
        assert_eq!(whole, ["{\"a\":1}", "one\ntwo", "[DONE]"]);
        for cut in 1..stream.len() {
            let mut parser = SseParser::new(1024);
            let mut got = events(&mut parser, &stream.as_bytes()[..cut]);
            got.extend(events(&mut parser, &stream.as_bytes()[cut..]));
            assert_eq!(got, whole, "cut at {cut}");
        }
    }

    #[test]
    fn the_last_event_counts_without_its_closing_blank_line() {
        let mut parser = SseParser::new(1024);
        assert!(events(&mut parser, b"data: {\"usage\":1}\ndata: x").is_empty());
        let mut last = Vec::new();
        parser.finish(|data| last.push(data.to_vec()));
        assert_eq!(last, [b"{\"usage\":1}\nx".to_vec()]);
    }

    #[test]
    fn a_line_or_event_past_the_limit_is_dropped_whole_and_parsing_goes_on_after_it() {
        let mut parser = SseParser::new(64);
        assert_eq!(
            parser.push(&[b'x'; 100], |_| {}),
            Err(EventTooLarge { limit: 64 })
        );
        assert_eq!(parser.buffered(), 0);
        // The rest of the long line and of its event are skipped, then events come again.
        assert_eq!(
            events(&mut parser, b"xxx\ndata: same event\n\ndata: ok\n\n"),
            ["ok"]
        );
        // Many short data lines of one event count together, and the event is dropped whole.
        let mut refused = 0;
        for _ in 0..10 {
            refused += usize::from(parser.push(b"data: 0123456789\n", |_| {}).is_err());
        }
        assert_eq!(refused, 1);
        assert_eq!(events(&mut parser, b"\ndata: next\n\n"), ["next"]);
    }
}
