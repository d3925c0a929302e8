//! The `sinkstar` binary end to end: `ppl` on the real model (scripts/fetch-model.sh puts it in
//! $SINKSTAR_HOME, default ~/.cache/sinkstar) over a short text, `ask` about a short document
//! with a pass key in it, `plot` on CSV files, `mta-toy` on the golden MTA model and `bench
//! --versus` on the real model. Run on whatever adapter wgpu picks (lavapipe will do); `plot`
//! needs DejaVu Sans (fonts-dejavu-core, scripts/setup.sh).

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

/// The opening of Jane Austen's "Emma" (1815, public domain): about 200 tokens.
const TEXT: &str = "Emma Woodhouse, handsome, clever, and rich, with a comfortable home
and happy disposition, seemed to unite some of the best blessings of
existence; and had lived nearly twenty-one years in the world with very
little to distress or vex her.

She was the youngest of the two daughters of a most affectionate,
indulgent father; and had, in consequence of her sister's marriage, been
mistress of his house from a very early period. Her mother had died
too long ago for her to have more than an indistinct remembrance of
her caresses; and her place had been supplied by an excellent woman as
governess, who had fallen little short of a mother in affection.

Sixteen years had Miss Taylor been in Mr. Woodhouse's family, less as a
governess than a friend, very fond of both daughters, but particularly
of Emma. Between them it was more the intimacy of sisters.
";

/// A file of this test binary's scratch folder, under a name unique to the test.
fn scratch(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{name}"))
}

fn text_file() -> PathBuf {
    let path = scratch("emma-opening.txt");
    std::fs::write(&path, TEXT).unwrap();
    path
}

fn sinkstar(args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_sinkstar"))
        .args(args)
        .env(
            "WGPU_BACKEND",
            std::env::var("WGPU_BACKEND").unwrap_or_else(|_| "vulkan".into()),
        )
        .output()
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The rows of a CSV file written by `ppl`, after checking its header.
fn ppl_rows(path: &PathBuf) -> Vec<(usize, f64, f64, u64)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("tokens_seen,nll,running_ppl,gpu_bytes"));
    lines
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            assert_eq!(f.len(), 4, "row {line:?}");
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
            )
        })
        .collect()
}

/// The PPL on `ppl`'s last stdout line.
fn reported_ppl(out: &str) -> f64 {
    let line = out.lines().last().unwrap();
    let after = line
        .split("PPL ")
        .nth(1)
        .unwrap_or_else(|| panic!("{line}"));
    after.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn ppl_sink_writes_csv_and_plot() {
    let (csv, png) = (scratch("sink.csv"), scratch("sink.png"));
    let text = text_file();
    let output = sinkstar(&[
        "ppl",
        text.to_str().unwrap(),
        "--tokens",
        "100",
        "--attention",
        "sink",
        "--window",
        "28",
        "--csv",
        csv.to_str().unwrap(),
        "--plot",
        png.to_str().unwrap(),
    ]);
    assert!(output.status.success());
    let out = stdout(&output);
    assert!(
        out.contains("sink (4 sinks + 28 window), 100 tokens scored"),
        "{out}"
    );
    let rows = ppl_rows(&csv);
    assert_eq!(rows.len(), 100);
    for (i, &(tokens_seen, nll, running_ppl, gpu_bytes)) in rows.iter().enumerate() {
        assert_eq!(tokens_seen, i + 1);
        assert!(nll.is_finite() && nll >= 0.0, "nll {nll} at {tokens_seen}");
        assert!(running_ppl.is_finite() && running_ppl >= 1.0);
        // The ring is allocated once: memory held does not move while streaming.
        assert_eq!(gpu_bytes, rows[0].3);
    }
    let mean_nll = rows.iter().map(|r| r.1).sum::<f64>() / rows.len() as f64;
    let ppl = reported_ppl(&out);
    assert!(
        (ppl - mean_nll.exp()).abs() < 1e-3 * ppl,
        "{ppl} vs {mean_nll}"
    );
    // English prose under a 135M model: tens, far from a collapse (thousands).
    assert!(ppl.is_finite() && ppl < 1000.0, "PPL {ppl}");
    let png = std::fs::read(&png).unwrap();
    assert!(png.starts_with(b"\x89PNG"));
}

#[test]
fn ppl_dense_stops_when_the_context_is_full() {
    let csv = scratch("dense.csv");
    let text = text_file();
    let output = sinkstar(&[
        "ppl",
        text.to_str().unwrap(),
        "--tokens",
        "100",
        "--attention",
        "dense",
        "--context",
        "64",
        "--csv",
        csv.to_str().unwrap(),
    ]);
    // A full cache ends the run, not the program: the PPL so far is the result.
    assert_eq!(output.status.code(), Some(0));
    let out = stdout(&output);
    assert!(out.contains("64 tokens scored"), "{out}");
    assert!(out.contains("context full"), "{out}");
    assert!(reported_ppl(&out).is_finite());
    assert_eq!(ppl_rows(&csv).len(), 64);
}

#[test]
fn plot_overlays_csv_files() {
    let (a, b, png) = (scratch("a.csv"), scratch("b.csv"), scratch("ab.png"));
    std::fs::write(&a, "tokens_seen,running_ppl\n1,100\n2,50\n3,40\n").unwrap();
    std::fs::write(&b, "tokens_seen,running_ppl\n1,90\n2,n/a\n3,3000\n").unwrap();
    let output = sinkstar(&[
        "plot",
        "--out",
        png.to_str().unwrap(),
        a.to_str().unwrap(),
        b.to_str().unwrap(),
    ]);
    assert!(output.status.success());
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    // A missing column is named, with the columns there are.
    let output = sinkstar(&[
        "plot",
        "--out",
        png.to_str().unwrap(),
        "--y",
        "ms_per_token",
        a.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("no column `ms_per_token` (columns: tokens_seen, running_ppl)"),
        "{err}"
    );
}

/// A pass key hidden in the middle of the opening of "Emma" (about 270 tokens in all).
fn passkey_file() -> PathBuf {
    let path = scratch("passkey.txt");
    let (head, tail) = TEXT.split_at(TEXT.find("Sixteen years").unwrap());
    std::fs::write(
        &path,
        format!("{head}The pass key is 68219. Remember it: 68219.\n\n{tail}"),
    )
    .unwrap();
    path
}

fn ask_json(args: &[&str]) -> serde_json::Value {
    let output = sinkstar(args);
    assert!(output.status.success(), "sinkstar {args:?} failed");
    serde_json::from_str(stdout(&output).trim()).unwrap()
}

#[test]
fn ask_reads_a_document_in_star_blocks_and_finds_the_pass_key() {
    let doc = passkey_file();
    let question = "What is the pass key? Answer with the number only.";
    // Star on one device and on two (opened side by side on one adapter), and dense.
    for (attention, devices) in [("star", "1"), ("star", "2"), ("dense", "1")] {
        let json = ask_json(&[
            "ask",
            "--doc",
            doc.to_str().unwrap(),
            "--block",
            "64",
            "--doc-attention",
            attention,
            "--devices",
            devices,
            "--max-tokens",
            "12",
            "--json",
            question,
        ]);
        let n_doc = json["documentTokens"].as_u64().unwrap();
        assert!(n_doc > 192, "{json}: the document spans more than 3 blocks");
        assert_eq!(json["attention"], attention, "{json}");
        assert_eq!(json["devices"].to_string(), devices, "{json}");
        if attention == "star" {
            assert_eq!(
                json["blocks"].as_u64().unwrap(),
                n_doc.div_ceil(64),
                "{json}"
            );
        }
        let text = json["text"].as_str().unwrap();
        assert!(text.contains("68219"), "{attention}: {text:?}");
    }
}

#[test]
fn ask_refuses_bad_input_by_name() {
    let missing = scratch("no-such-document.txt");
    let output = sinkstar(&["ask", "--doc", missing.to_str().unwrap(), "What?"]);
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("no-such-document.txt"), "{err}");
    let doc = passkey_file();
    let output = sinkstar(&[
        "ask",
        "--doc",
        doc.to_str().unwrap(),
        "--block",
        "64",
        "--anchor",
        "65",
        "What?",
    ]);
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("anchor of 65 tokens"), "{err}");
    let output = sinkstar(&[
        "ask",
        "--doc",
        doc.to_str().unwrap(),
        "--devices",
        "0",
        "What?",
    ]);
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("--devices must be at least 1"), "{err}");
}

#[test]
fn chat_reads_a_document_with_slash_doc_then_resets_to_the_ring() {
    let doc = passkey_file();
    let input = format!(
        "/doc {}\nWhat is the pass key? Answer with the number only.\n/reset\nWhat is the \
         capital of France?\n",
        doc.display()
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_sinkstar"))
        .args(["chat", "--block", "64", "--max-tokens", "16"])
        .env(
            "WGPU_BACKEND",
            std::env::var("WGPU_BACKEND").unwrap_or_else(|_| "vulkan".into()),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let (out, err) = (stdout(&output), String::from_utf8_lossy(&output.stderr));
    eprintln!("{err}");
    assert!(output.status.success());
    assert!(
        err.contains("with Star Attention in 4 blocks of 64"),
        "{err}"
    );
    let replies: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(replies.len(), 2, "{out}");
    assert!(replies[0].contains("68219"), "{out}");
    assert!(replies[1].contains("Paris"), "{out}");
    // After /reset the chat is back on its sink ring.
    assert!(err.contains("(sink)"), "{err}");
}

#[test]
fn mta_toy_scores_the_models_of_a_directory() {
    // `mta-toy` with golden MTA model a standing in for both trained ones: its greedy next
    // token after a golden case (the argmax of PyTorch's logits) is a right answer, the token
    // after it a wrong one, so each must score exactly 1 of 2.
    let golden = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/mta");
    let dir = scratch("mta-toy");
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["standard", "mta"] {
        common::write_mta_golden("a", &dir.join(name));
    }
    let text = std::fs::read_to_string(golden.join("a/golden.json")).unwrap();
    let case: serde_json::Value = serde_json::from_str(&text).unwrap();
    let case = &case["cases"][1];
    let last = case["logits"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_array()
        .unwrap();
    let argmax = (0..last.len())
        .max_by(|&i, &j| {
            last[i]
                .as_f64()
                .unwrap()
                .total_cmp(&last[j].as_f64().unwrap())
        })
        .unwrap();
    let prompt = &case["tokens"];
    let lines = [
        serde_json::json!({"prompt": prompt, "answer": [argmax]}),
        serde_json::json!({"prompt": prompt, "answer": [(argmax + 1) % last.len()]}),
    ];
    let jsonl: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.join("test.jsonl"), jsonl).unwrap();
    let json = scratch("mta-toy.json");
    let dir_arg = dir.to_str().unwrap();
    let out = sinkstar(&[
        "mta-toy",
        "--dir",
        dir_arg,
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(
        text.contains("| standard | 2 | 50.0% (1 wrong) |"),
        "{text}"
    );
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(result["standard"]["wrong"], 1);
    assert_eq!(result["mta"]["wrong"], 1);

    let out = sinkstar(&["mta-toy", "--dir", scratch("no-such-dir").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("run scripts/mta_toy.py first"));
}

#[test]
fn a_hugging_face_directory_generates_and_chats() {
    // Golden MTA model a with the byte-level BPE tokenizer of tests/golden/tokenizer: the
    // directory's tokenizer.json encodes the prompt, its chat template wraps the turn, and an
    // MTA model defaults to dense attention.
    let dir = scratch("hf-chat");
    common::write_hf_chat_model(&dir);
    let model = dir.to_str().unwrap();
    let prompt = "Emma Woodhouse, handsome, clever, and rich";
    let out = sinkstar(&[
        "--model",
        model,
        "generate",
        "--prompt",
        prompt,
        "--json",
        "--max-tokens",
        "6",
    ]);
    assert!(out.status.success());
    let json: serde_json::Value =
        serde_json::from_str(stdout(&out).lines().last().unwrap()).unwrap();
    let tokens: Vec<u32> = json["tokenIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();

    // The same through the library: tokenizer.json, the model, greedy decode.
    let (tokenizer, template) = sinkstar::tokenizer::hf::load_hf_tokenizer_dir(&dir).unwrap();
    let gpu_model =
        std::sync::Arc::new(sinkstar::model::hf::load_hf_dir(common::gpu(), &dir).unwrap());
    let mut session = sinkstar::model::Session::new(
        gpu_model,
        &sinkstar::model::SessionOptions {
            policy: sinkstar::attention::AttentionPolicy::Dense { capacity: 256 },
            ..Default::default()
        },
    )
    .unwrap();
    let ids = tokenizer.encode(prompt).unwrap();
    assert_eq!(json["promptTokens"], ids.len());
    let greedy = sinkstar::generate::SamplingParams {
        temperature: 0.0,
        ..Default::default()
    };
    let mut want = Vec::new();
    let mut token = session.feed_and_sample(&ids, &greedy).unwrap();
    while want.len() < 6 && token != tokenizer.eos() {
        want.push(token);
        token = session.feed_and_sample(&[token], &greedy).unwrap();
    }
    assert_eq!(tokens, want);
    assert_eq!(json["text"], tokenizer.decode(&want).unwrap());

    // A chat turn through the directory's template.
    let mut chat = Command::new(env!("CARGO_BIN_EXE_sinkstar"))
        .args(["--model", model, "chat", "--max-tokens", "4"])
        .env("WGPU_BACKEND", "vulkan")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    chat.stdin
        .take()
        .unwrap()
        .write_all(b"Hi\n/quit\n")
        .unwrap();
    let out = chat.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("dense"), "{err}");
    let rendered = template
        .unwrap()
        .render(&[sinkstar::tokenizer::ChatMessage::user("Hi")], true)
        .unwrap();
    assert!(rendered.ends_with("<|im_start|>assistant\n"));

    let out = sinkstar(&["--model", model, "info"]);
    assert!(out.status.success());
    assert!(
        stdout(&out).contains("Multi-Token Attention"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_hugging_face_directory_with_missing_files_is_named() {
    let dir = scratch("hf-incomplete");
    common::write_hf_chat_model(&dir);
    let model = dir.to_str().unwrap();
    let out = sinkstar(&[
        "--model",
        model,
        "chat",
        "--attention",
        "sink",
        "--window",
        "60",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Multi-Token Attention"), "{err}");
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let out = sinkstar(&["--model", model, "generate", "--prompt", "x"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tokenizer.json"), "{err}");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let out = sinkstar(&["--model", model, "generate", "--prompt", "x"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("model.safetensors"), "{err}");
    let out = sinkstar(&["--model", model, "serve"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a directory"));
}

#[test]
fn matvec_flag_chooses_the_decode_form() {
    // lavapipe: auto takes the vec form (a CPU driver), subgroup is there on request.
    for (flag, form) in [("auto", "vec"), ("vec", "vec"), ("subgroup", "subgroup")] {
        let out = sinkstar(&["--matvec", flag, "info"]);
        assert!(out.status.success());
        let text = stdout(&out);
        assert!(
            text.contains(&format!("decode matvec: {form}")),
            "--matvec {flag}: {text}"
        );
    }
    let out = sinkstar(&["--matvec", "simd", "info"]);
    assert!(!out.status.success());
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    // `sinkstar info | head -0`: the reader is gone before the first line is written.
    let mut child = Command::new(env!("CARGO_BIN_EXE_sinkstar"))
        .arg("info")
        .env(
            "WGPU_BACKEND",
            std::env::var("WGPU_BACKEND").unwrap_or_else(|_| "vulkan".into()),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    use std::os::unix::process::ExitStatusExt;
    // Ended by SIGPIPE (13 on Linux and macOS), not by a panic's exit code.
    assert_eq!(out.status.signal(), Some(13), "{:?}", out.status);
}

#[test]
fn bench_versus_runs_both_device_configurations_in_turn() {
    // The default model, fused against separate output projection: the second decodes with
    // one dispatch more per layer.
    let json = scratch("versus.json");
    let out = sinkstar(&[
        "bench",
        "--versus",
        "--output-projection separate",
        "--prompt-tokens",
        "8",
        "--decode-tokens",
        "8",
        "--repeat",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let versus = &result["versus"];
    assert_eq!(versus["flags"], "--output-projection separate");
    let (a, b) = (
        versus["a_decode_dispatches"].as_u64().unwrap(),
        versus["b_decode_dispatches"].as_u64().unwrap(),
    );
    assert_eq!(b, a + 30, "{versus}");
    assert_eq!(versus["decode"]["turns"], 2);
    for timing in [&versus["decode"], &versus["prefill"][0]] {
        let ratio = timing["time_ratio"].as_f64().unwrap();
        assert!(ratio.is_finite() && ratio > 0.0, "{timing}");
    }
    assert!(versus["prefill"][0]["b_tok_per_s"].as_f64().unwrap() > 0.0);
    assert!(versus["decode"]["a_ms_per_token"].as_f64().unwrap() > 0.0);

    // With --history: both decode after a history that wraps a small sink ring (4 + 40 slots
    // and room for a chunk, 107), and both sides' profiles say where the difference is: a's
    // projection is inside its attention.
    let out = sinkstar(&[
        "bench",
        "--versus",
        "--output-projection separate",
        "--attention",
        "sink",
        "--window",
        "40",
        "--history",
        "150",
        "--history-only",
        "--history-decode",
        "8",
        "--repeat",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(result.get("versus").is_none(), "--history-only: {result}");
    let versus = &result["versus_history"];
    assert_eq!(versus["policy"], "sink");
    assert_eq!(versus["turns"], 2);
    let point = &versus["points"][0];
    assert_eq!(point["history"], 150);
    let ratio = point["time_ratio"].as_f64().unwrap();
    assert!(ratio.is_finite() && ratio > 0.0, "{point}");
    let part = |name: &str| {
        let parts = versus["profile"].as_array().unwrap();
        let found = parts.iter().find(|p| p["part"] == name);
        let found = found.unwrap_or_else(|| panic!("no {name} in {versus}"));
        [&found["a_secs"], &found["b_secs"]].map(|s| s.as_f64().unwrap())
    };
    let [a, b] = part("output projection + residual");
    assert!(a == 0.0 && b > 0.0, "{versus}");
    let [a, b] = part("attention");
    assert!(a > 0.0 && b > 0.0, "{versus}");

    // Only device flags: a policy flag is refused by name.
    let out = sinkstar(&["bench", "--versus", "--attention sink"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--versus takes device flags only"), "{err}");
    assert!(err.contains("--attention"), "{err}");
}
