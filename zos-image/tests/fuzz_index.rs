//! Property tests for the index decoder: arbitrary and mutated input never panics, and anything
//! that decodes can be walked completely without panicking.

use proptest::prelude::*;
use zos_image::format::{encode, ChunkInfo, Index, Kind, Meta, Node, NodeKind, Piece, Tree};
use zos_image::Hash;

fn walk(index: &Index) {
    for ino in 0..index.inode_count() {
        let Ok(inode) = index.inode(ino) else {
            continue;
        };
        let _ = index.xattrs(&inode);
        match inode.kind {
            Kind::Dir => {
                if let Ok(entries) = index.dir_entries(&inode) {
                    for e in entries.flatten() {
                        let _ = index.lookup(&inode, e.0);
                    }
                }
                let _ = index.lookup(&inode, b"missing");
            }
            Kind::File => {
                for i in 0..index.file_chunk_count(&inode) {
                    if let Ok(r) = index.file_chunk(&inode, i) {
                        let _ = index.chunk(r.chunk);
                    }
                }
                let _ = index.file_chunk_at(&inode, inode.size / 2);
            }
            Kind::Symlink => {
                let _ = index.symlink_target(&inode);
            }
            _ => {}
        }
    }
    let _ = index.resolve(b"a/b/c");
}

fn sample_index() -> Vec<u8> {
    let meta = Meta {
        perm: 0o644,
        uid: 1,
        gid: 2,
        mtime_sec: 5,
        mtime_nsec: 6,
    };
    let c1 = ChunkInfo {
        hash: Hash::of(b"1"),
        raw_len: 10,
    };
    let c2 = ChunkInfo {
        hash: Hash::of(b"2"),
        raw_len: 20,
    };
    let tree = Tree {
        nodes: vec![
            Node {
                meta,
                kind: NodeKind::Dir(vec![
                    (b"f".to_vec(), 1),
                    (b"d".to_vec(), 2),
                    (b"l".to_vec(), 3),
                    (b"h".to_vec(), 1),
                ]),
                xattrs: vec![],
            },
            Node {
                meta,
                kind: NodeKind::File {
                    size: 27,
                    pieces: vec![
                        Piece::whole(c1),
                        Piece {
                            chunk: c2,
                            offset: 3,
                            len: 17,
                        },
                    ],
                },
                xattrs: vec![(b"user.a".to_vec(), b"b".to_vec())],
            },
            Node {
                meta,
                kind: NodeKind::Dir(vec![(b"dev".to_vec(), 4), (b"\xff\xfe".to_vec(), 5)]),
                xattrs: vec![],
            },
            Node {
                meta,
                kind: NodeKind::Symlink(b"../x".to_vec()),
                xattrs: vec![],
            },
            Node {
                meta,
                kind: NodeKind::CharDev(0x103),
                xattrs: vec![],
            },
            Node {
                meta,
                kind: NodeKind::Fifo,
                xattrs: vec![],
            },
        ],
    };
    encode(&tree).unwrap().0
}

#[test]
fn sample_index_decodes() {
    let idx = Index::parse(sample_index()).unwrap();
    walk(&idx);
    assert_eq!(idx.inode_count(), 6);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(idx) = Index::parse(bytes) { walk(&idx); }
    }

    #[test]
    fn random_body_after_valid_header_never_panics(body in proptest::collection::vec(any::<u8>(), 0..1024), counts in proptest::array::uniform5(0u64..8)) {
        let mut bytes = b"ZOSIMG\0\0".to_vec();
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        for c in counts { bytes.extend_from_slice(&c.to_le_bytes()); }
        bytes.extend_from_slice(&[0u8; 8]);
        bytes.extend_from_slice(&body);
        if let Ok(idx) = Index::parse(bytes) { walk(&idx); }
    }

    #[test]
    fn mutated_valid_index_never_panics(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let mut bytes = sample_index();
        for (pos, val) in flips {
            let n = bytes.len();
            bytes[pos % n] = val;
        }
        if let Some(cut) = cut {
            let n = bytes.len();
            bytes.truncate(cut % n);
        }
        if let Ok(idx) = Index::parse(bytes) { walk(&idx); }
    }
}
