//! Follows HTTP/1.1 chunked framing (RFC 9112 §7.1) in bytes that are relayed as they are: it
//! finds the chunks' data, for the token tap, and the end of the message, to know when the
//! backend connection may be reused. It never rewrites anything.

/// The framing is broken: the connection cannot be trusted with another message.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

/// Hex digits a chunk size may have: 2^60 bytes is past anything a backend sends.
const MAX_SIZE_DIGITS: u32 = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the size's hex digits.
    Size {
        size: u64,
        digits: u32,
    },
    /// Whitespace after the size, which only a `;` (an extension) or the line's end may follow.
    SizeWs {
        size: u64,
    },
    /// After the size: chunk extensions, skipped to the end of the line.
    Extension {
        size: u64,
    },
    /// The size line's CR was seen.
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// In a trailer line, which only CRLF ends (a bare LF there is part of the line, as hyper,
    /// the router's reader, takes it: both must find the same end of the message).
    TrailerLine,
    TrailerLf,
    FinalLf,
    Done,
}

#[derive(Debug)]
pub struct Chunked {
    state: State,
}

impl Default for Chunked {
    fn default() -> Self {
        Self {
            state: State::Size { size: 0, digits: 0 },
        }
    }
}

impl Chunked {
    /// Reads the next `bytes` of the body, handing each piece of chunk data to `data`. Returns
    /// where in `bytes` the message ended, once it did.
    pub fn feed(
        &mut self,
        bytes: &[u8],
        mut data: impl FnMut(&[u8]),
    ) -> Result<Option<usize>, Malformed> {
        let mut at = 0;
        while at < bytes.len() {
            if let State::Data { left } = self.state {
                let take = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len() - at);
                data(&bytes[at..at + take]);
                at += take;
                let left = left - take as u64;
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data { left }
                };
                continue;
            }
            let byte = bytes[at];
            at += 1;
            self.state = match (self.state, byte) {
                (State::Size { size, digits }, _) if byte.is_ascii_hexdigit() => {
                    if digits == MAX_SIZE_DIGITS {
                        return Err(Malformed);
                    }
                    let digit = (byte as char).to_digit(16).ok_or(Malformed)?;
                    State::Size {
                        size: size * 16 + u64::from(digit),
                        digits: digits + 1,
                    }
                }
                (State::Size { digits: 0, .. }, _) => return Err(Malformed),
                (State::Size { size, .. } | State::SizeWs { size }, b' ' | b'\t') => {
                    State::SizeWs { size }
                }
                (State::Size { size, .. } | State::SizeWs { size }, b';') => {
                    State::Extension { size }
                }
                (
                    State::Size { size, .. } | State::SizeWs { size } | State::Extension { size },
                    b'\r',
                ) => State::SizeLf { size },
                (
                    State::Size { size, .. }
                    | State::SizeWs { size }
                    | State::Extension { size }
                    | State::SizeLf { size },
                    b'\n',
                ) => {
                    if size == 0 {
                        State::TrailerStart
                    } else {
                        State::Data { left: size }
                    }
                }
                (State::Size { .. } | State::SizeWs { .. } | State::SizeLf { .. }, _) => {
                    return Err(Malformed)
                }
                (State::Extension { size }, _) => State::Extension { size },
                (State::DataCr, b'\r') => State::DataLf,
                (State::DataCr | State::DataLf, b'\n') => State::Size { size: 0, digits: 0 },
                (State::DataCr | State::DataLf, _) => return Err(Malformed),
                (State::TrailerStart, b'\r') => State::FinalLf,
                (State::FinalLf, b'\n') => State::Done,
                (State::TrailerLine, b'\r') => State::TrailerLf,
                (State::TrailerLf, b'\n') => State::TrailerStart,
                (State::FinalLf | State::TrailerLf, _) => return Err(Malformed),
                (State::TrailerStart | State::TrailerLine, _) => State::TrailerLine,
                (State::Data { .. }, _) | (State::Done, _) => return Err(Malformed),
            };
            if self.state == State::Done {
                return Ok(Some(at));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    /// Feeds `wire` in two pieces split at every position; each must give the same data and end.
    fn read_split(wire: &[u8]) -> Vec<(Vec<u8>, Option<usize>)> {
        (0..=wire.len())
            .map(|split| {
                let mut chunked = Chunked::default();
                let mut data = Vec::new();
                let mut end = chunked
                    .feed(&wire[..split], |piece| data.extend_from_slice(piece))
                    .unwrap();
                if end.is_none() {
                    end = chunked
                        .feed(&wire[split..], |piece| data.extend_from_slice(piece))
                        .unwrap()
                        .map(|at| at + split);
                }
                (data, end)
            })
            .collect()
    }

    #[test]
    fn data_and_end_are_found_however_the_bytes_arrive() {
        let wire = b"5\r\nhello\r\n7;name=value\r\n, world\r\n0\r\n\r\nNEXT";
        for (data, end) in read_split(wire) {
            assert_eq!(data, b"hello, world");
            assert_eq!(end, Some(wire.len() - 4));
        }
    }

    #[test]
    fn trailers_are_skipped_and_bare_newlines_accepted() {
        let wire = b"A\nabcdefghij\n0\r\nx-trailer: 1\r\nother: 2\r\n\r\n";
        for (data, end) in read_split(wire) {
            assert_eq!(data, b"abcdefghij");
            assert_eq!(end, Some(wire.len()));
        }
    }

    /// Found by the comparison with hyper: a bare LF in the trailers ended a line for us and
    /// not for hyper, so the two found different ends of the message.
    #[test]
    fn only_crlf_ends_a_trailer_line() {
        let wire = b"1\r\na\r\n0\r\nx: 1\n\r\ny: 2\r\n\r\n";
        for (data, end) in read_split(wire) {
            assert_eq!(data, b"a");
            assert_eq!(end, Some(wire.len()));
        }
        let mut chunked = Chunked::default();
        assert_eq!(chunked.feed(b"0\r\n\n", |_| {}), Ok(None));
    }

    #[test]
    fn an_unfinished_body_has_no_end() {
        let mut chunked = Chunked::default();
        assert_eq!(chunked.feed(b"3\r\nabc\r\n", |_| {}), Ok(None));
        assert_eq!(chunked.feed(b"0\r\n", |_| {}), Ok(None));
        assert_eq!(chunked.feed(b"\r\n", |_| {}), Ok(Some(2)));
    }

    #[test]
    fn broken_framing_is_refused() {
        for wire in [
            &b"\r\n"[..],
            b"zz\r\n",
            b"3\r\nabcX",
            b"3\rX",
            b"1234567890abcdef0\r\n",
            b"0\r\n\rX",
            // found by the comparison with hyper: only an extension may follow the size's
            // whitespace
            b"2c\t\xff;a=b\r\n",
            b"5 garbage\r\n",
        ] {
            assert_eq!(
                Chunked::default().feed(wire, |_| {}),
                Err(Malformed),
                "{wire:?}"
            );
        }
    }
}

#[cfg(test)]
#[path = "chunked_proptests.rs"]
mod proptests;
