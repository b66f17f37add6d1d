//! The `xml` crate's parser of a stream, live or parked.
//!
//! An idle stream need not keep a parser: its state between two first-level elements is only
//! "inside the root, with the namespaces of the stream header in scope", and the crate's parser
//! holds ~3 KiB for that (its configuration, lexer and namespace stack). Parked, the stream keeps
//! the [`Framer`] and the header's bytes; brought back, a new parser reads the header again from
//! those bytes, then the framed bytes as before — the same state, as the same bytes made it.

use super::super::framer::Framer;
use super::{map_parser_error, parser_config, Failure, Limits};
use std::io::{self, Read};
use std::sync::Arc;
use xml::reader::{EventReader, XmlEvent};

/// What the parser reads: the stream header again after a parked parser is brought back, then the
/// framed bytes.
pub(super) struct Source {
    replay: Option<Arc<[u8]>>,
    at: usize,
    framer: Framer,
}

impl Read for Source {
    #[inline]
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if let Some(bytes) = &self.replay {
            if self.at < bytes.len() {
                let n = out.len().min(bytes.len() - self.at);
                out[..n].copy_from_slice(&bytes[self.at..self.at + n]);
                self.at += n;
                return Ok(n);
            }
            self.replay = None;
        }
        self.framer.read(out)
    }
}

/// The parser, or (parked) only what it reads from.
pub(super) enum Reader {
    Live(Box<EventReader<Source>>),
    Parked(Source),
}

/// Events a replayed header may produce before its start tag (the document start).
const REPLAY_EVENTS: usize = 4;

impl Reader {
    /// A live parser over `framer`.
    pub(super) fn new(limits: Limits, framer: Framer) -> Reader {
        let source = Source {
            replay: None,
            at: 0,
            framer,
        };
        Reader::Live(Box::new(parser_config(limits).create_reader(source)))
    }

    pub(super) fn framer(&self) -> &Framer {
        match self {
            Reader::Live(r) => &r.source().framer,
            Reader::Parked(s) => &s.framer,
        }
    }

    pub(super) fn framer_mut(&mut self) -> &mut Framer {
        match self {
            Reader::Live(r) => &mut r.source_mut().framer,
            Reader::Parked(s) => &mut s.framer,
        }
    }

    /// The next event of the live parser; `Err` if it is parked (the caller brings it back
    /// first).
    pub(super) fn next(&mut self) -> Result<XmlEvent, Failure> {
        match self {
            Reader::Live(r) => r.next().map_err(|e| map_parser_error(&e)),
            Reader::Parked(_) => Err(Failure::NotWellFormed("parser parked".into())),
        }
    }

    /// Drop the parser, keep what it reads from. Only between frames (the parser has read
    /// everything released to it).
    pub(super) fn park(&mut self, limits: Limits) {
        if let Reader::Live(_) = self {
            let budget = self.framer().budget().clone();
            let empty = Reader::Parked(Source {
                replay: None,
                at: 0,
                framer: Framer::new(limits, budget),
            });
            if let Reader::Live(r) = std::mem::replace(self, empty) {
                *self = Reader::Parked(r.into_inner());
            }
        }
    }

    /// Bring a parked parser back: a new one reads `header` (the bytes of the stream header,
    /// from the start of the stream) up to the header's start tag.
    pub(super) fn unpark(&mut self, limits: Limits, header: &Arc<[u8]>) -> Result<(), Failure> {
        if let Reader::Live(_) = self {
            return Ok(());
        }
        let budget = self.framer().budget().clone();
        let empty = Reader::Parked(Source {
            replay: None,
            at: 0,
            framer: Framer::new(limits, budget),
        });
        let Reader::Parked(mut source) = std::mem::replace(self, empty) else {
            return Ok(());
        };
        source.replay = Some(header.clone());
        source.at = 0;
        let mut r = Box::new(parser_config(limits).create_reader(source));
        let mut started = false;
        for _ in 0..REPLAY_EVENTS {
            if let XmlEvent::StartElement { .. } = r.next().map_err(|e| map_parser_error(&e))? {
                started = true;
                break;
            }
        }
        *self = Reader::Live(r);
        if started {
            Ok(())
        } else {
            Err(Failure::NotWellFormed("stream header replay".into()))
        }
    }
}
