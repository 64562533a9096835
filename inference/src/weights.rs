//! The hash a service commits to for the weights it serves: blake2-256 of the exact file read
//! (the GGUF of a chat model, `model.safetensors` of an embedding model), streamed so a large
//! model is never read into memory twice.

use std::{
    io::Read,
    path::{Path, PathBuf},
};

/// blake2-256 of the file at `path`.
pub fn file_hash(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut file = std::fs::File::open(path)?;
    let mut state = blake2b_simd::Params::new().hash_length(32).to_state();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        state.update(&buf[..n]);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(state.finalize().as_bytes());
    Ok(out)
}

/// The file whose hash names an embedding model kept as a sentence-transformers directory.
pub fn embedding_weights_file(dir: &Path) -> PathBuf {
    dir.join("model.safetensors")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_to_the_same_hash_as_one_pass() {
        let path = std::env::temp_dir().join(format!("weights-hash-{}", std::process::id()));
        // Three buffers and a bit, so the loop crosses buffer boundaries.
        let data: Vec<u8> = (0..(3 << 20) + 17).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let one_pass = blake2b_simd::Params::new().hash_length(32).hash(&data);
        assert_eq!(file_hash(&path).unwrap(), one_pass.as_bytes());
        std::fs::remove_file(path).unwrap();
    }
}
