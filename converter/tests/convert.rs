//! tern-convert on the committed fixtures and on broken copies of them.

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};
use tern_convert::output_types::quantize_blocks;
use tern_convert::{convert, hf_name, temp_files, unpack_matrix, Checkpoint, Options};
use tern_format::names::expected_tensors;
use tern_format::ternary::{absmean_scale, ternarize};
use tern_format::{block_quant, Encoding, Shape, TernFile};

const FIXTURES: [&str; 4] = ["tiny-tied", "tiny-untied", "tiny-odd-gqa-bf16", "tiny-f16-sharded"];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures").join(name)
}

fn quiet(embed: Encoding) -> Options {
    Options { embed, progress: false, pause_per_tensor: None }
}

/// A writable copy of a fixture folder.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    dir
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(v.as_object_mut().unwrap());
    std::fs::write(p, serde_json::to_string(&v).unwrap()).unwrap();
}

/// Rewrites `model.safetensors` through `f(name, dtype, shape, bytes)`, which returns the
/// replacement or None to drop the tensor; `extra` tensors are added.
fn edit_tensors(
    dir: &Path,
    f: impl Fn(&str, Dtype, &[usize], &[u8]) -> Option<(Dtype, Vec<usize>, Vec<u8>)>,
    extra: Vec<(String, Dtype, Vec<usize>, Vec<u8>)>,
) {
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        if let Some((d, s, b)) = f(&name, view.dtype(), view.shape(), view.data()) {
            owned.push((name, d, s, b));
        }
    }
    owned.extend(extra);
    let views: Vec<(String, TensorView)> =
        owned.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    std::fs::write(p, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// Converting `dir` fails with a message containing `needle`, leaving no output and no temp file.
fn assert_fails(dir: &Path, needle: &str) {
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("out.tern");
    let err = format!("{:#}", convert(dir, &out, &quiet(Encoding::F16)).unwrap_err());
    assert!(err.contains(needle), "error {err:?} does not mention {needle:?}");
    assert!(!out.exists(), "output written despite the error");
    assert_eq!(temp_files(&out), Vec::<PathBuf>::new(), "temp file left behind");
}

#[test]
fn every_tensor_round_trips_exactly() {
    for name in FIXTURES {
        for embed in [Encoding::F16, Encoding::F32, Encoding::Q8, Encoding::Q6, Encoding::Q4] {
            let out_dir = tempfile::tempdir().unwrap();
            let out = out_dir.path().join("m.tern");
            let summary = convert(&fixture(name), &out, &quiet(embed)).unwrap();
            let bytes = std::fs::read(&out).unwrap();
            let file = TernFile::parse(&bytes).unwrap();
            file.verify().unwrap();
            assert_eq!(summary.output_bytes, bytes.len() as u64);
            let ckpt = Checkpoint::open(&fixture(name)).unwrap();
            let expected = expected_tensors(file.config());
            assert_eq!(file.tensors().len(), expected.len(), "{name}");
            assert_eq!(summary.tensors, expected.len());
            let mut zeros = 0u64;
            for e in expected {
                let info = file.expect_tensor(&e.name, &e.encodings, e.shape).unwrap();
                let hf = hf_name(&e.name).into_iter().find(|h| ckpt.get(h).is_some()).unwrap();
                let src = ckpt.read_f32(&hf, ckpt.get(&hf).unwrap()).unwrap();
                let data = file.tensor(&e.name).unwrap().data;
                match info.encoding {
                    Encoding::T2 => {
                        let Shape::Matrix { rows, cols } = info.shape else { panic!() };
                        let scale = absmean_scale(&src);
                        assert_eq!(info.scale, scale, "{name} {}", e.name);
                        let mut want = vec![0i8; src.len()];
                        ternarize(&src, scale, &mut want);
                        let got = unpack_matrix(data, rows as usize, cols as usize).unwrap();
                        assert_eq!(got, want, "{name} {}", e.name);
                        zeros += want.iter().filter(|&&w| w == 0).count() as u64;
                    }
                    Encoding::F32 => {
                        let got: Vec<f32> =
                            data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
                        assert_eq!(got, src, "{name} {}", e.name);
                    }
                    Encoding::Q8 => {
                        let Shape::Matrix { rows, cols } = info.shape else { panic!() };
                        assert_eq!(data, &tern_convert::quantize_q8(&src, cols as usize)[..]);
                        // Each value is within half a step of its row's scale.
                        for (r, row) in src.chunks(cols as usize).enumerate() {
                            let s = f32::from_le_bytes(data[4 * r..4 * r + 4].try_into().unwrap());
                            let q = &data[rows as usize * 4 + r * cols as usize..][..cols as usize];
                            for (&v, &b) in row.iter().zip(q) {
                                assert!((f32::from(b as i8) * s - v).abs() <= 0.5001 * s, "{name} row {r}");
                            }
                        }
                    }
                    Encoding::Q6 | Encoding::Q4 => {
                        let Shape::Matrix { cols, .. } = info.shape else { panic!() };
                        let cols = cols as usize;
                        let want = quantize_blocks(info.encoding, &src, cols, &hf).unwrap();
                        assert_eq!(data, &want[..], "{name} {}", e.name);
                        // Each value is within half a step of its block's scale, or clamped at
                        // the top of the range (the scale maps the largest value near -Q).
                        let rb = block_quant::row_bytes(info.encoding, cols);
                        let mut row = vec![0f32; cols];
                        for (r, (bytes, src)) in data.chunks(rb).zip(src.chunks(cols)).enumerate() {
                            block_quant::dequantize_row(info.encoding, bytes, &mut row);
                            for (c, (&got, &v)) in row.iter().zip(src).enumerate() {
                                let blk = &bytes[c / 32 * block_quant::block_bytes(info.encoding)..];
                                let d = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32().abs();
                                assert!((got - v).abs() <= 1.5001 * d, "{name} {} row {r} col {c}", e.name);
                            }
                        }
                    }
                    Encoding::F16 => {
                        let got: Vec<u16> =
                            data.chunks_exact(2).map(|b| u16::from_le_bytes(b.try_into().unwrap())).collect();
                        let want: Vec<u16> = src.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect();
                        assert_eq!(got, want, "{name} {}", e.name);
                    }
                }
            }
            assert_eq!(summary.zero_weights, zeros);
            assert!(summary.zero_fraction() > 0.2 && summary.zero_fraction() < 0.5);
        }
    }
}

#[test]
fn config_is_carried_over() {
    let out_dir = tempfile::tempdir().unwrap();
    let get = |name: &str| {
        let out = out_dir.path().join(format!("{name}.tern"));
        convert(&fixture(name), &out, &quiet(Encoding::F16)).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        TernFile::parse(&bytes).unwrap().config().clone()
    };
    let tied = get("tiny-tied");
    assert!(tied.tied_output && tied.attn_sub_norm && tied.ffn_sub_norm);
    assert_eq!((tied.hidden_size, tied.intermediate_size, tied.n_layers), (64, 128, 2));
    assert_eq!((tied.bos_id, tied.eos_id, tied.pad_id), (Some(1), Some(2), None));
    // generation_config.json of this fixture: temperature 0.7, top_p 0.9, top_k 20.
    assert_eq!((tied.generation.temperature, tied.generation.top_p, tied.generation.top_k), (0.7, 0.9, 20));
    assert!(!get("tiny-untied").tied_output);
    let gqa = get("tiny-odd-gqa-bf16");
    assert_eq!((gqa.n_heads, gqa.n_kv_heads, gqa.head_dim, gqa.hidden_size), (6, 2, 16, 96));
    assert_eq!(gqa.generation, tern_format::GenerationDefaults::default());
}

#[test]
fn converting_twice_gives_identical_bytes() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (d.path().join("a.tern"), d.path().join("b.tern"));
    convert(&fixture("tiny-f16-sharded"), &a, &quiet(Encoding::F16)).unwrap();
    convert(&fixture("tiny-f16-sharded"), &b, &quiet(Encoding::F16)).unwrap();
    assert!(std::fs::read(a).unwrap() == std::fs::read(b).unwrap());
}

#[test]
fn overwrite_is_atomic_and_failures_keep_the_old_file() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("m.tern");
    std::fs::write(&out, b"old contents").unwrap();
    let broken = copy_fixture("tiny-tied");
    edit_config(broken.path(), |c| {
        c.remove("hidden_size");
    });
    assert!(convert(broken.path(), &out, &quiet(Encoding::F16)).is_err());
    assert_eq!(std::fs::read(&out).unwrap(), b"old contents");
    convert(&fixture("tiny-tied"), &out, &quiet(Encoding::F16)).unwrap();
    TernFile::parse(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(temp_files(&out), Vec::<PathBuf>::new());
}

#[test]
fn missing_config_field() {
    let d = copy_fixture("tiny-tied");
    edit_config(d.path(), |c| {
        c.remove("num_hidden_layers");
    });
    assert_fails(d.path(), "num_hidden_layers: missing");
}

#[test]
fn hidden_not_divisible_by_heads() {
    let d = copy_fixture("tiny-tied");
    edit_config(d.path(), |c| {
        c.insert("num_attention_heads".into(), 5.into());
        c.insert("num_key_value_heads".into(), 5.into());
    });
    assert_fails(d.path(), "hidden_size 64 is not divisible by num_attention_heads 5");
}

#[test]
fn unknown_architecture() {
    let d = copy_fixture("tiny-tied");
    edit_config(d.path(), |c| {
        c.insert("architectures".into(), serde_json::json!(["MambaForCausalLM"]));
    });
    assert_fails(d.path(), "unknown architecture");
}

#[test]
fn config_that_is_not_json() {
    let d = copy_fixture("tiny-tied");
    std::fs::write(d.path().join("config.json"), "{ not json").unwrap();
    assert_fails(d.path(), "config.json: not a valid config.json");
}

#[test]
fn missing_tensor() {
    let d = copy_fixture("tiny-tied");
    let gone = "model.layers.1.mlp.up_proj.weight";
    edit_tensors(d.path(), |n, dt, s, b| (n != gone).then(|| (dt, s.to_vec(), b.to_vec())), vec![]);
    assert_fails(d.path(), "missing tensor model.layers.1.mlp.up_proj.weight");
}

#[test]
fn wrong_shape() {
    let d = copy_fixture("tiny-tied");
    edit_tensors(
        d.path(),
        |n, dt, s, b| {
            let s = if n == "model.layers.0.self_attn.k_proj.weight" { vec![s[1], s[0] / 2, 2] } else { s.to_vec() };
            Some((dt, s, b.to_vec()))
        },
        vec![],
    );
    assert_fails(d.path(), "model.layers.0.self_attn.k_proj.weight has shape [64, 32, 2], expected [64, 64]");
}

#[test]
fn nan_and_inf_weights() {
    for bad in [f32::NAN, f32::INFINITY] {
        let d = copy_fixture("tiny-tied");
        edit_tensors(
            d.path(),
            |n, dt, s, b| {
                let mut b = b.to_vec();
                if n == "model.layers.1.self_attn.o_proj.weight" {
                    b[40..44].copy_from_slice(&bad.to_le_bytes());
                }
                Some((dt, s.to_vec(), b))
            },
            vec![],
        );
        assert_fails(d.path(), "tensor model.layers.1.self_attn.o_proj.weight has a non-finite value");
    }
}

#[test]
fn unsupported_dtype() {
    let d = copy_fixture("tiny-tied");
    edit_tensors(
        d.path(),
        |n, dt, s, b| {
            if n == "model.norm.weight" {
                Some((Dtype::I32, s.to_vec(), b.to_vec()))
            } else {
                Some((dt, s.to_vec(), b.to_vec()))
            }
        },
        vec![],
    );
    assert_fails(d.path(), "model.norm.weight has dtype I32");
}

#[test]
fn extra_tensor_is_a_warning() {
    let d = copy_fixture("tiny-tied");
    edit_tensors(
        d.path(),
        |_, dt, s, b| Some((dt, s.to_vec(), b.to_vec())),
        vec![("model.mystery.weight".into(), Dtype::F32, vec![2], vec![0; 8])],
    );
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("m.tern");
    let summary = convert(d.path(), &out, &quiet(Encoding::F16)).unwrap();
    assert_eq!(summary.warnings, vec!["checkpoint tensor model.mystery.weight is not used".to_string()]);
}

#[test]
fn shard_named_by_the_index_is_missing() {
    let d = copy_fixture("tiny-f16-sharded");
    std::fs::remove_file(d.path().join("model-00002-of-00002.safetensors")).unwrap();
    assert_fails(d.path(), "shard model-00002-of-00002.safetensors");
}

#[test]
fn only_a_sentencepiece_tokenizer() {
    let d = copy_fixture("tiny-tied");
    std::fs::remove_file(d.path().join("tokenizer.json")).unwrap();
    std::fs::write(d.path().join("tokenizer.model"), b"spm").unwrap();
    assert_fails(d.path(), "only tokenizer.model");
}

#[test]
fn tokenizer_larger_than_the_vocabulary() {
    let d = copy_fixture("tiny-tied");
    let p = d.path().join("tokenizer.json");
    let mut t: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    t["added_tokens"].as_array_mut().unwrap().push(serde_json::json!({
        "id": 700, "content": "<extra>", "single_word": false, "lstrip": false,
        "rstrip": false, "normalized": false, "special": true
    }));
    std::fs::write(&p, t.to_string()).unwrap();
    assert_fails(d.path(), "token id 700 does not fit the model's vocab_size 512");
}

#[test]
fn no_checkpoint_and_not_a_folder() {
    let d = copy_fixture("tiny-tied");
    std::fs::remove_file(d.path().join("model.safetensors")).unwrap();
    assert_fails(d.path(), "no model.safetensors");
    let f = tempfile::NamedTempFile::new().unwrap();
    assert_fails(f.path(), "not a folder");
}

#[test]
fn unwritable_output_path() {
    let out = Path::new("/nonexistent-tern-dir/sub/m.tern");
    let err = format!("{:#}", convert(&fixture("tiny-tied"), out, &quiet(Encoding::F16)).unwrap_err());
    assert!(
        err.contains("/nonexistent-tern-dir/sub/m.tern: cannot create a temp file in /nonexistent-tern-dir/sub"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let err = format!("{:#}", convert(&fixture("tiny-tied"), dir.path(), &quiet(Encoding::F16)).unwrap_err());
    assert!(err.contains("is a folder"), "{err}");
}

/// SIGKILL half-way through a conversion leaves nothing at the output path (only its
/// clearly named `.partial` temp file), and the next run succeeds.
#[test]
fn killed_conversion_leaves_no_output() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("m.tern");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tern-convert"))
        .arg(fixture("tiny-untied"))
        .arg("-o")
        .arg(&out)
        .env("TERN_CONVERT_PAUSE_MS", "100")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while temp_files(&out).is_empty() {
        assert!(t0.elapsed().as_secs() < 20, "conversion never started writing");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // 36 tensors at 100 ms each: a few tensors in, far from the end.
    std::thread::sleep(std::time::Duration::from_millis(350));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!out.exists());
    let left = temp_files(&out);
    assert_eq!(left.len(), 1, "{left:?}");
    // What was left is not a valid file: its header is written last.
    assert!(TernFile::parse(&std::fs::read(&left[0]).unwrap()).is_err());
    convert(&fixture("tiny-untied"), &out, &quiet(Encoding::F16)).unwrap();
    assert_eq!(temp_files(&out), left, "the next run writes and renames a temp file of its own");
    TernFile::parse(&std::fs::read(&out).unwrap()).unwrap().verify().unwrap();
}

/// Every single byte of a converted fixture is covered: flipping any one of them makes
/// parse + verify fail.
#[test]
fn every_byte_flip_of_a_fixture_is_caught() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("m.tern");
    convert(&fixture("tiny-tied"), &out, &quiet(Encoding::F16)).unwrap();
    let good = std::fs::read(&out).unwrap();
    let check = |bytes: &[u8]| TernFile::parse(bytes).and_then(|f| f.verify()).is_err();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = good.len().div_ceil(threads);
    let missed: Vec<usize> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|k| {
                let good = &good;
                s.spawn(move || {
                    let mut bad = good.clone();
                    let mut missed = Vec::new();
                    for i in k * chunk..((k + 1) * chunk).min(good.len()) {
                        bad[i] ^= 0x40;
                        if !check(&bad) {
                            missed.push(i);
                        }
                        bad[i] ^= 0x40;
                    }
                    missed
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert!(
        missed.is_empty(),
        "flips at {} offsets went unnoticed, first {:?}",
        missed.len(),
        &missed[..missed.len().min(5)]
    );
    assert!(!check(&good));
}
