//! Incremental decoding for `lrnnx generate`: the text of each new token,
//! without decoding every id generated so far again.
//!
//! A token's text need not be its decode alone: a multi-byte character can
//! span several byte tokens, and many tokenizers' decoders look at the tokens
//! around one (WordPiece's `##` continuations and spacing, Metaspace's leading
//! `▁`). The decoder keeps a small window of ids: the tokens already printed
//! at its start give the new ones their context, and the text the new ids
//! add to the window's decode is what gets printed, once it no longer ends in
//! an unfinished character (U+FFFD). Each step decodes the window only, so a
//! generation of n tokens costs O(n · window), not O(n²).

use lrnnx::train::Tokenizer;

/// The text of a token stream, piece by piece.
pub struct TextStream<'a> {
    tok: &'a dyn Tokenizer,
    ids: Vec<u32>,
    /// Start of the window: the context tokens (already printed) begin here.
    prefix: usize,
    /// End of what has been printed: the ids from here on are new.
    read: usize,
    /// Decode of `ids[prefix..read]`.
    prefix_text: String,
    /// Everything [`push`](Self::push) has returned.
    printed: String,
}

/// What is left once the stream ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// Text still to print after what [`TextStream::push`] returned (held-back
    /// trailing bytes, printed as the replacement character they decode to).
    /// Empty when the tokenizer's whole decode does not continue what was
    /// printed (see `consistent`).
    pub rest: String,
    /// The decode of every id at once.
    pub whole: String,
    /// Whether what was printed followed by `rest` equals `whole`. False only
    /// for a tokenizer whose decode of a window of ids disagrees with its
    /// decode of the whole list.
    pub consistent: bool,
}

impl<'a> TextStream<'a> {
    /// An empty stream decoding with `tok`.
    pub fn new(tok: &'a dyn Tokenizer) -> Self {
        Self {
            tok,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
            prefix_text: String::new(),
            printed: String::new(),
        }
    }

    /// Adds `id`; gives the text it completes (possibly empty: the token may
    /// need the next ones to decode cleanly).
    pub fn push(&mut self, id: u32) -> lrnnx::Result<&str> {
        self.ids.push(id);
        let text = self.tok.decode(&self.ids[self.prefix..])?;
        let grows = text.len() > self.prefix_text.len() && text.starts_with(&self.prefix_text);
        if !grows || text.ends_with('\u{fffd}') {
            return Ok("");
        }
        let start = self.printed.len();
        self.printed.push_str(&text[self.prefix_text.len()..]);
        // The new ids become the next window's context.
        self.prefix = self.read;
        self.read = self.ids.len();
        self.prefix_text = self.tok.decode(&self.ids[self.prefix..self.read])?;
        Ok(&self.printed[start..])
    }

    /// Every id pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Ends the stream: one decode of every id, and what of it is still to print.
    pub fn finish(self) -> lrnnx::Result<Finished> {
        let whole = self.tok.decode(&self.ids)?;
        let (rest, consistent) = match whole.strip_prefix(self.printed.as_str()) {
            Some(rest) => (rest.to_string(), true),
            None => (String::new(), false),
        };
        Ok(Finished {
            rest,
            whole,
            consistent,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use lrnnx::train::{ByteTokenizer, Tokenizer};
    use rand::{Rng, SeedableRng};

    use super::{Finished, TextStream};

    /// Streams `ids` through `tok`; gives the pieces joined and the end.
    fn stream(tok: &dyn Tokenizer, ids: &[u32]) -> (String, Finished) {
        let mut s = TextStream::new(tok);
        let mut out = String::new();
        for &id in ids {
            out.push_str(s.push(id).unwrap());
        }
        assert_eq!(s.ids(), ids);
        let end = s.finish().unwrap();
        out.push_str(&end.rest);
        (out, end)
    }

    /// Counts the ids passed to `decode`.
    struct Counting<T>(T, AtomicUsize);

    impl<T: Tokenizer> Tokenizer for Counting<T> {
        fn encode(&self, text: &str) -> lrnnx::Result<Vec<u32>> {
            self.0.encode(text)
        }
        fn decode(&self, ids: &[u32]) -> lrnnx::Result<String> {
            self.1.fetch_add(ids.len(), Ordering::Relaxed);
            self.0.decode(ids)
        }
        fn vocab_size(&self) -> usize {
            self.0.vocab_size()
        }
    }

    /// A WordPiece-like decoder: words joined by spaces, `##` pieces glued
    /// on, no space before punctuation, the first word's space dropped. A
    /// token decoded alone differs from its text inside the list.
    struct Pieces;

    const VOCAB: [&str; 8] = ["hello", "##lo", "world", ".", "##s", "a", "é", "##ü"];

    impl Tokenizer for Pieces {
        fn encode(&self, _: &str) -> lrnnx::Result<Vec<u32>> {
            Ok(vec![])
        }
        fn decode(&self, ids: &[u32]) -> lrnnx::Result<String> {
            let mut s = String::new();
            for &id in ids {
                let t = VOCAB[id as usize % VOCAB.len()];
                match t.strip_prefix("##") {
                    Some(glued) => s.push_str(glued),
                    None if t == "." => s.push('.'),
                    None => {
                        s.push(' ');
                        s.push_str(t);
                    }
                }
            }
            Ok(s.trim_start().to_string())
        }
        fn vocab_size(&self) -> usize {
            VOCAB.len()
        }
    }

    /// Decodes to its ids' letters in reverse: no window of it agrees with the whole.
    struct Reversed;

    impl Tokenizer for Reversed {
        fn encode(&self, _: &str) -> lrnnx::Result<Vec<u32>> {
            Ok(vec![])
        }
        fn decode(&self, ids: &[u32]) -> lrnnx::Result<String> {
            Ok(ids
                .iter()
                .rev()
                .map(|&i| char::from(b'a' + (i % 26) as u8))
                .collect())
        }
        fn vocab_size(&self) -> usize {
            26
        }
    }

    #[test]
    fn streamed_bytes_equal_the_whole_decode() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let text = "héllo wörld — ∑ 🦀 naïve";
        let mut cases: Vec<Vec<u32>> = vec![
            text.bytes().map(u32::from).collect(),
            vec![0xE2],
            vec![b'a'.into(), 0xE2, 0x82],
            vec![0xF0, b'b'.into(), 0x90, 0x80, b'c'.into()],
            "\u{fffd}x\u{fffd}".bytes().map(u32::from).collect(),
        ];
        // Random bytes, mostly from the text (valid characters split across
        // tokens), some anything (invalid sequences).
        for _ in 0..300 {
            let n = rng.random_range(0..40);
            cases.push(
                (0..n)
                    .map(|_| match rng.random_range(0..4) {
                        0 => rng.random_range(0..256u32),
                        _ => u32::from(text.as_bytes()[rng.random_range(0..text.len())]),
                    })
                    .collect(),
            );
        }
        for ids in cases {
            let (out, end) = stream(&ByteTokenizer, &ids);
            assert!(end.consistent, "{ids:?}");
            assert_eq!(out, ByteTokenizer.decode(&ids).unwrap(), "{ids:?}");
            assert_eq!(end.whole, out);
        }
    }

    #[test]
    fn a_multi_byte_character_is_printed_once_complete() {
        let mut s = TextStream::new(&ByteTokenizer);
        let pieces: Vec<String> = "a€b"
            .bytes()
            .map(|b| s.push(b.into()).unwrap().to_string())
            .collect();
        assert_eq!(pieces, ["a", "", "", "€", "b"]);
    }

    #[test]
    fn context_dependent_pieces_equal_the_whole_decode() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        for _ in 0..300 {
            let n = rng.random_range(0..30);
            let ids: Vec<u32> = (0..n).map(|_| rng.random_range(0..8)).collect();
            let (out, end) = stream(&Pieces, &ids);
            assert!(end.consistent, "{ids:?}");
            assert_eq!(out, Pieces.decode(&ids).unwrap(), "{ids:?}");
        }
        // Decoded one by one the tokens would read "hello lo world . s".
        let (out, _) = stream(&Pieces, &[0, 1, 2, 3, 4]);
        assert_eq!(out, "hellolo world.s");
    }

    #[test]
    fn each_step_decodes_a_window_not_the_whole_list() {
        let tok = Counting(ByteTokenizer, AtomicUsize::new(0));
        let ids: Vec<u32> = "abcdefghij".repeat(200).bytes().map(u32::from).collect();
        let (out, _) = stream(&tok, &ids);
        assert_eq!(out.len(), ids.len());
        let decoded = tok.1.load(Ordering::Relaxed);
        // Two small decodes per token plus the final whole decode; decoding
        // the whole list per token would be ids² / 2 = 2,000,000.
        assert!(decoded <= 6 * ids.len(), "{decoded} ids decoded");
    }

    #[test]
    fn a_decoder_that_disagrees_with_its_windows_is_reported_not_a_panic() {
        // Each new id changes the text before it: no window's decode is a
        // prefix of the next one, and nothing may be sliced by length.
        let (_, end) = stream(&Reversed, &[0, 1, 2, 3]);
        assert!(!end.consistent);
        assert_eq!(end.whole, "dcba");
        assert_eq!(end.rest, "");
    }
}
