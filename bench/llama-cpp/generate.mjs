// Greedy generation with llama.cpp (node-llama-cpp prebuilt binaries) for the same prompt and
// token budget as `cargo run -p provider-worker --example generate`; prints text and speed.
import {getLlama} from "node-llama-cpp";
const llama = await getLlama({gpu: false, build: "never", logLevel: "warn"});
const model = await llama.loadModel({modelPath: process.argv[2]});
const ctx = await model.createContext({contextSize: 512, threads: 2});
const seq = ctx.getSequence();
const prompt = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWrite a story about a dragon who learns to fly.<|im_end|>\n<|im_start|>assistant\n";
const tokens = model.tokenize(prompt, true);
let out = [];
const t0 = performance.now(); let t1 = 0;
for await (const tok of seq.evaluate(tokens, {temperature: 0})) {
  if (!t1) t1 = performance.now();
  if (model.isEogToken(tok)) break;
  out.push(tok);
  if (out.length >= 64) break;
}
const t2 = performance.now();
console.log(JSON.stringify(model.detokenize(out)));
console.log(`llama.cpp: prompt ${tokens.length} tokens, completion ${out.length}, first token ${(t1-t0).toFixed(0)} ms, decode ${((out.length-1)/((t2-t1)/1000)).toFixed(1)} tokens/s`);
process.exit(0);
