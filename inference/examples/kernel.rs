//! Throughput of the quantized matrix products (`model::qmatmul`, else candle's) on the model's
//! own matrices: for each shape, the time of one product with a single activation row (a decode
//! step) and with four, as weight bytes read per second, on the team of `$COMPUTE_THREADS`
//! threads (default: every core). The matrix stays in the caches between repetitions, so this
//! is the kernels' speed, not the memory's.
//! `cargo run --release -p provider-worker --example kernel -- [MODEL]`

use candle_core::quantized::gguf_file;
use compute_inference::qmatmul::{kernel_name, QMatrix};
use std::{path::PathBuf, time::Instant};

fn main() -> anyhow::Result<()> {
    let model = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .or_else(compute_inference::default_model_path)
        .ok_or_else(|| anyhow::anyhow!("no model: run `make model`"))?;
    let bytes = std::fs::read(&model)?;
    let mut cursor = std::io::Cursor::new(&bytes);
    let content = gguf_file::Content::read(&mut cursor)?;
    println!("kernel: {}", kernel_name().unwrap_or("none (candle's path)"));
    let team = compute_inference::team::global();
    for total in [2usize, 8] {
        let iters = 100_000;
        let start = Instant::now();
        for _ in 0..iters {
            team.run(total, &|i| {
                std::hint::black_box(i);
            });
        }
        println!(
            "team of {}: {total} empty tasks in {:.2} µs",
            team.size(),
            start.elapsed().as_secs_f64() * 1e6 / iters as f64
        );
    }
    for name in [
        "blk.0.attn_q.weight",
        "blk.0.ffn_gate.weight",
        "blk.0.ffn_down.weight",
        "token_embd.weight",
    ] {
        let t = content.tensor(&mut cursor, name, &candle_core::Device::Cpu)?;
        let (rows, cols) = t.shape().dims2()?;
        let weight_bytes = (rows * cols / 32) as f64 * t.dtype().type_size() as f64;
        let m = QMatrix::new(&t)?;
        let candle = candle_core::quantized::QMatMul::from_qtensor(t)?;
        for n in [1usize, 4] {
            let xs: Vec<f32> =
                (0..n * cols).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
            let iters = (2e9 / weight_bytes) as usize + 1;
            let time = |f: &dyn Fn()| {
                f();
                let start = Instant::now();
                for _ in 0..iters {
                    f();
                }
                start.elapsed().as_secs_f64() / iters as f64
            };
            let x = candle_core::Tensor::from_slice(&xs, (n, cols), &candle_core::Device::Cpu)?;
            let product = || match &m {
                Some(m) => drop(m.forward_rows(&xs)),
                None => drop(candle_core::Module::forward(&candle, &x)),
            };
            let t = time(&product);
            println!(
                "{name} [{rows}×{cols}] {}, batch {n}: {:.1} µs on {} threads ({:.1} GB/s)",
                if m.is_some() { "ours" } else { "candle" },
                t * 1e6,
                team.size(),
                weight_bytes / t / 1e9,
            );
        }
    }
    Ok(())
}
