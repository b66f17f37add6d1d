//! The `xml` crate's parser of a stream, live or parked.
//!
//! An idle stream need not keep a parser: its state between two first-level elements is only
//! "inside the root, with the namespaces of the stream header in scope", and the crate's parser
//! holds ~3 KiB for that (its configuration, lexer and namespace stack). Parked, the stream keeps
//! the [`Framer`] and the header's bytes; brought back, a new parser reads the header again
//! ([`Framer::replay`]), then the framed bytes as before — the same state, as the same bytes made
//! it. The parser reads the framer directly, as before: nothing is added per byte.

use super::super::framer::Framer;
use super::{map_parser_error, parser_config, Failure, Limits};
use xml::reader::{EventReader, XmlEvent};

/// The parser, or (parked) only what it reads from.
pub(super) enum Reader {
    Live(Box<EventReader<Framer>>),
    Parked(Framer),
}

/// Events a replayed header may produce before its start tag (the document start).
const REPLAY_EVENTS: usize = 4;

impl Reader {
    /// A live parser over `framer`.
    pub(super) fn new(limits: Limits, framer: Framer) -> Reader {
        Reader::Live(Box::new(parser_config(limits).create_reader(framer)))
    }

    pub(super) fn framer(&self) -> &Framer {
        match self {
            Reader::Live(r) => r.source(),
            Reader::Parked(f) => f,
        }
    }

    pub(super) fn framer_mut(&mut self) -> &mut Framer {
        match self {
            Reader::Live(r) => r.source_mut(),
            Reader::Parked(f) => f,
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

    /// Take the framer out, leaving an empty one (no allocation) in its place.
    fn take_framer(&mut self, limits: Limits) -> Framer {
        let empty = Framer::new(limits, self.framer().budget().clone());
        match std::mem::replace(self, Reader::Parked(empty)) {
            Reader::Live(r) => r.into_inner(),
            Reader::Parked(f) => f,
        }
    }

    /// Drop the parser, keep what it reads from. Only between frames (the parser has read
    /// everything released to it).
    pub(super) fn park(&mut self, limits: Limits) {
        if let Reader::Live(_) = self {
            let framer = self.take_framer(limits);
            *self = Reader::Parked(framer);
        }
    }

    /// Bring a parked parser back: a new one reads `header` (the bytes of the stream header,
    /// from the start of the stream) up to the header's start tag.
    pub(super) fn unpark(&mut self, limits: Limits, header: &[u8]) -> Result<(), Failure> {
        if let Reader::Live(_) = self {
            return Ok(());
        }
        let mut framer = self.take_framer(limits);
        framer.replay(header);
        let mut r = Box::new(parser_config(limits).create_reader(framer));
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
