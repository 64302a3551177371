//! Chunking and the stored-object codec.
//!
//! A chunk is named by BLAKE3 of its plaintext. What a store holds under that name is an
//! object: one codec byte (0 = raw, 1 = zstd) followed by the payload. Decoding always ends with
//! re-hashing the plaintext, so a store can never substitute content: verification needs only
//! the name.

use std::io::Read;

use crate::error::{Error, Result};
use crate::format::{ChunkInfo, MAX_CHUNK_LEN};
use crate::hash::Hash;

/// Files up to this size are packed together with their neighbours (in tree order) into shared
/// chunks of about PACK_TARGET bytes: one hash and one fetch for a whole directory of small files.
pub const PACK_FILE_MAX: u64 = 32 << 10;
pub const PACK_TARGET: u64 = 256 << 10;
/// Files up to this size are stored as a single chunk.
pub const SMALL_FILE_MAX: u64 = 256 << 10;
/// FastCDC bounds for larger files. Small enough that a lazy mount fetches little more than
/// what is read; large enough that per-chunk overhead (40 bytes of index, one request) is noise.
pub const CDC_MIN: u32 = 64 << 10;
pub const CDC_AVG: u32 = 256 << 10;
pub const CDC_MAX: u32 = 1 << 20;

const CODEC_RAW: u8 = 0;
const CODEC_ZSTD: u8 = 1;
const ZSTD_LEVEL: i32 = 3;

thread_local! {
    // Compression contexts are expensive to set up (hundreds of KB of tables): one per thread
    // and level, reused for every chunk.
    static PROBE: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> = const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
    static FULL: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> = const { std::cell::RefCell::new(None) };
}

fn compress_with(
    slot: &'static std::thread::LocalKey<
        std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>>,
    >,
    level: i32,
    data: &[u8],
) -> Option<Vec<u8>> {
    slot.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = zstd::bulk::Compressor::new(level).ok();
        }
        cell.as_mut()?.compress(data).ok()
    })
}

/// A chunk ready to be stored.
pub struct EncodedChunk {
    pub info: ChunkInfo,
    pub object: Vec<u8>,
}

/// Hash and (when it pays) compress one chunk of plaintext.
pub fn encode_chunk(plain: &[u8]) -> EncodedChunk {
    let hash = Hash::of(plain);
    let object = encode_object(plain);
    EncodedChunk {
        info: ChunkInfo {
            hash,
            raw_len: plain.len() as u32,
        },
        object,
    }
}

/// Compress only when it saves at least 1/16th. Large chunks are probed first: three small
/// samples that do not compress at the fastest level mean the chunk is incompressible (media,
/// archives, already-compressed binaries), which skips the full compression pass there.
pub fn encode_object(plain: &[u8]) -> Vec<u8> {
    let worth_trying = plain.len() >= 64 && (plain.len() < 32 << 10 || probe_compressible(plain));
    if worth_trying {
        if let Some(compressed) = compress_with(&FULL, ZSTD_LEVEL, plain) {
            if compressed.len() + compressed.len() / 15 < plain.len() {
                let mut out = Vec::with_capacity(compressed.len() + 1);
                out.push(CODEC_ZSTD);
                out.extend_from_slice(&compressed);
                return out;
            }
        }
    }
    let mut out = Vec::with_capacity(plain.len() + 1);
    out.push(CODEC_RAW);
    out.extend_from_slice(plain);
    out
}

fn probe_compressible(plain: &[u8]) -> bool {
    const SAMPLE: usize = 4096;
    let mid = plain.len() / 2 - SAMPLE / 2;
    let mut saved = 0usize;
    for start in [0, mid, plain.len() - SAMPLE] {
        let sample = &plain[start..start + SAMPLE];
        if let Some(c) = compress_with(&PROBE, 1, sample) {
            saved += SAMPLE.saturating_sub(c.len());
        }
    }
    saved * 16 >= 3 * SAMPLE
}

/// The longest stored object a chunk of `raw_len` plaintext bytes can have: the encoder keeps
/// the compressed form only when it is smaller, so one codec byte plus the plaintext.
pub fn max_stored_len(raw_len: u32) -> u64 {
    1 + u64::from(raw_len)
}

/// Decode a stored object and check it against its name and expected length.
pub fn decode_object(hash: &Hash, object: &[u8], expected_len: Option<u32>) -> Result<Vec<u8>> {
    let bad = |reason: String| Error::ChunkCorrupt {
        hash: *hash,
        reason,
    };
    let (&codec, payload) = object
        .split_first()
        .ok_or_else(|| bad("empty object".into()))?;
    let plain = match codec {
        CODEC_RAW => payload.to_vec(),
        CODEC_ZSTD => {
            let limit = expected_len.unwrap_or(MAX_CHUNK_LEN) as usize;
            DECOMPRESSOR
                .with(|cell| {
                    let mut cell = cell.borrow_mut();
                    if cell.is_none() {
                        *cell = Some(zstd::bulk::Decompressor::new()?);
                    }
                    match cell.as_mut() {
                        Some(d) => d.decompress(payload, limit),
                        None => Err(std::io::Error::other("no zstd context")),
                    }
                })
                .map_err(|e| bad(format!("zstd: {e}")))?
        }
        other => return Err(bad(format!("unknown codec {other}"))),
    };
    if let Some(len) = expected_len {
        if plain.len() != len as usize {
            return Err(bad(format!("length {} instead of {len}", plain.len())));
        }
    }
    if plain.len() > MAX_CHUNK_LEN as usize {
        return Err(bad("larger than any chunk may be".into()));
    }
    let actual = Hash::of(&plain);
    if actual != *hash {
        return Err(bad(format!("content hashes to {actual}")));
    }
    Ok(plain)
}

/// Cut a file's content into chunks and hand each one to `sink` in order.
/// Small files become one chunk; larger ones are cut with FastCDC so that an insertion only
/// changes the chunks around it.
pub fn chunk_reader(
    mut reader: impl Read,
    size: u64,
    mut sink: impl FnMut(&[u8]) -> Result<()>,
) -> std::io::Result<u64> {
    if size <= SMALL_FILE_MAX {
        let mut buf = Vec::with_capacity(size as usize);
        reader
            .by_ref()
            .take(SMALL_FILE_MAX + 1)
            .read_to_end(&mut buf)?;
        if !buf.is_empty() {
            sink(&buf).map_err(std::io::Error::other)?;
        }
        return Ok(buf.len() as u64);
    }
    let mut total = 0u64;
    for chunk in fastcdc::v2020::StreamCDC::new(reader, CDC_MIN, CDC_AVG, CDC_MAX) {
        let chunk = chunk.map_err(|e| match e {
            fastcdc::v2020::Error::IoError(io) => io,
            other => std::io::Error::other(other.to_string()),
        })?;
        total += chunk.data.len() as u64;
        sink(&chunk.data).map_err(std::io::Error::other)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_round_trip_and_tamper_detection() {
        let text = b"hello world ".repeat(1000);
        let enc = encode_chunk(&text);
        assert_eq!(enc.object[0], CODEC_ZSTD);
        assert_eq!(
            decode_object(&enc.info.hash, &enc.object, Some(enc.info.raw_len)).unwrap(),
            text
        );
        let mut bad = enc.object.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert!(decode_object(&enc.info.hash, &bad, Some(enc.info.raw_len)).is_err());
        assert!(decode_object(&enc.info.hash, &[], None).is_err());
        assert!(decode_object(&enc.info.hash, &[9, 1, 2], None).is_err());
    }

    #[test]
    fn incompressible_data_is_stored_raw() {
        let mut data = vec![0u8; 200_000];
        let mut x = 0x1234_5678_u64;
        for b in data.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        assert_eq!(encode_object(&data)[0], CODEC_RAW);
    }
}
