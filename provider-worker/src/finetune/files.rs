//! Uploaded datasets, kept per user under `<data_dir>/finetune/files/<user>/<hash>.jsonl` with a
//! JSON sidecar of what was counted. Only users with an escrow with this provider upload; each
//! keeps at most `max_files_per_user` files (the oldest one no open job uses is dropped).

use compute_client::finetune_api::{file_id, FileFacts, FileObject};
use compute_primitives::AccountId;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What is known of an uploaded file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileMeta {
    #[serde(with = "super::record::hex32")]
    pub hash: [u8; 32],
    pub filename: String,
    pub bytes: u64,
    pub created_at: u64,
    pub examples: u64,
    pub tokens: u64,
    pub max_seq_len: u64,
}

impl FileMeta {
    /// OpenAI's `file` object of this file.
    pub fn object(&self) -> FileObject {
        FileObject {
            id: file_id(&self.hash),
            object: "file".into(),
            bytes: self.bytes,
            created_at: self.created_at,
            filename: self.filename.clone(),
            purpose: "fine-tune".into(),
            status: "processed".into(),
            compute: FileFacts {
                hash: hex::encode(self.hash),
                examples: self.examples,
                tokens: self.tokens,
                max_seq_len: self.max_seq_len,
            },
        }
    }
}

/// The dataset directory.
pub struct FileStore {
    root: PathBuf,
    max_per_user: usize,
}

impl FileStore {
    pub fn new(root: PathBuf, max_per_user: usize) -> Self {
        FileStore { root, max_per_user }
    }

    fn user_dir(&self, user: &AccountId) -> PathBuf {
        self.root.join(hex::encode(<AccountId as AsRef<[u8]>>::as_ref(user)))
    }

    /// Where the bytes of `user`'s file `hash` are.
    pub fn data_path(&self, user: &AccountId, hash: &[u8; 32]) -> PathBuf {
        self.user_dir(user).join(format!("{}.jsonl", hex::encode(hash)))
    }

    fn meta_path(&self, user: &AccountId, hash: &[u8; 32]) -> PathBuf {
        self.user_dir(user).join(format!("{}.json", hex::encode(hash)))
    }

    /// The file's facts, if `user` uploaded it.
    pub fn get(&self, user: &AccountId, hash: &[u8; 32]) -> Option<FileMeta> {
        let text = std::fs::read(self.meta_path(user, hash)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Every file `user` keeps, oldest first.
    pub fn list(&self, user: &AccountId) -> Vec<FileMeta> {
        let Ok(dir) = std::fs::read_dir(self.user_dir(user)) else { return Vec::new() };
        let mut out: Vec<FileMeta> = dir
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
            .collect();
        out.sort_by_key(|m: &FileMeta| (m.created_at, m.hash));
        out
    }

    /// Keep `data` as `user`'s file, dropping the oldest files not in `in_use` beyond the
    /// per-user bound. Fails when every kept file is in use.
    pub fn put(
        &self,
        user: &AccountId,
        meta: &FileMeta,
        data: &[u8],
        in_use: &dyn Fn(&[u8; 32]) -> bool,
    ) -> std::io::Result<()> {
        let dir = self.user_dir(user);
        std::fs::create_dir_all(&dir)?;
        if self.get(user, &meta.hash).is_none() {
            let mut kept = self.list(user);
            while kept.len() >= self.max_per_user {
                let Some(i) = kept.iter().position(|m| !in_use(&m.hash)) else {
                    return Err(std::io::Error::other(format!(
                        "{} datasets kept, each used by an open job",
                        kept.len()
                    )));
                };
                let old = kept.remove(i);
                let _ = std::fs::remove_file(self.meta_path(user, &old.hash));
                let _ = std::fs::remove_file(self.data_path(user, &old.hash));
            }
        }
        write_atomic(&self.data_path(user, &meta.hash), data)?;
        let json = serde_json::to_vec(meta).map_err(std::io::Error::other)?;
        write_atomic(&self.meta_path(user, &meta.hash), &json)
    }
}

/// Write through a temporary file renamed into place, so a crash never leaves half a file.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(n: u8, at: u64) -> FileMeta {
        FileMeta {
            hash: [n; 32],
            filename: format!("{n}.jsonl"),
            bytes: 1,
            created_at: at,
            examples: 1,
            tokens: 1,
            max_seq_len: 2,
        }
    }

    #[test]
    fn each_user_keeps_a_bounded_number_of_files_and_never_loses_one_in_use() {
        let root = std::env::temp_dir().join(format!("ft-files-{}", std::process::id()));
        let store = FileStore::new(root.clone(), 2);
        let user = AccountId::new([1; 32]);
        let other = AccountId::new([2; 32]);
        let none = |_: &[u8; 32]| false;
        store.put(&user, &meta(1, 1), b"a", &none).unwrap();
        store.put(&user, &meta(2, 2), b"b", &none).unwrap();
        store.put(&other, &meta(9, 1), b"z", &none).unwrap();
        // A third file drops the oldest one not in use.
        let first_in_use = |h: &[u8; 32]| *h == [1; 32];
        store.put(&user, &meta(3, 3), b"c", &first_in_use).unwrap();
        let kept: Vec<_> = store.list(&user).iter().map(|m| m.hash[0]).collect();
        assert_eq!(kept, vec![1, 3]);
        assert!(store.get(&user, &[9; 32]).is_none(), "another user's file is not ours");
        let all = |_: &[u8; 32]| true;
        assert!(store.put(&user, &meta(4, 4), b"d", &all).is_err());
        std::fs::remove_dir_all(root).unwrap();
    }
}
