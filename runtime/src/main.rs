#![forbid(unsafe_code)]

mod chat_cli;
mod sampling_args;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tern::bench::BenchResult;
use tern::generate::{generate, Interrupted};
use tern::session::{Request, Session};
use tern::tokenizer::TextTokenizer;
use tern::{KvType, Model, ModelFile};

/// Run BitNet b1.58 models from a packed .tern file.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt
    Generate(GenerateArgs),
    /// Chat with the model, using its own chat template
    Chat(chat_cli::ChatArgs),
    /// Serve the model over an OpenAI-compatible HTTP API, decoding requests together
    Serve(ServeArgs),
    /// Print logits for given token ids as JSON
    Logits {
        model: PathBuf,
        /// Comma-separated token ids, e.g. 1,17,300
        #[arg(long, value_delimiter = ',', required = true)]
        tokens: Vec<u32>,
        /// One row of logits per position (default: the last position only)
        #[arg(long)]
        all: bool,
        /// Worker threads (default: the physical cores this process may use)
        #[arg(long)]
        threads: Option<usize>,
        /// Prompt chunk size: tokens that go through the layers together (the logits do not depend on it)
        #[arg(short = 'b', long = "batch-size", default_value_t = tern::model::DEFAULT_BATCH)]
        batch: usize,
    },
    /// Print the token ids of a text as JSON
    Tokenize { model: PathBuf, text: String },
    /// Perplexity of a text file (windows of --ctx tokens, each starting with BOS)
    Perplexity {
        model: PathBuf,
        text_file: PathBuf,
        /// Window length in tokens, BOS included (default: the model's context)
        #[arg(long)]
        ctx: Option<usize>,
        /// Print {"ppl": ..., "nats_per_token": ..., "tokens": ...}
        #[arg(long)]
        json: bool,
        /// Worker threads (default: the physical cores this process may use)
        #[arg(long)]
        threads: Option<usize>,
        /// KV cache type: f32 (exact, as the reference), or f16 (half the memory and the bytes read per token)
        #[arg(long = "cache-type", value_enum, default_value_t = KvType::F32)]
        kv: KvType,
        /// Prompt chunk size: tokens that go through the layers together (the logits do not depend on it)
        #[arg(short = 'b', long = "batch-size", default_value_t = tern::model::DEFAULT_BATCH)]
        batch: usize,
    },
    /// Measure prompt processing and generation speed (llama-bench style)
    Bench {
        model: PathBuf,
        /// Prompt tokens for the pp test, comma-separated for several tests (0 = skip)
        #[arg(short = 'p', long = "n-prompt", value_delimiter = ',', default_value = "128")]
        pp: Vec<usize>,
        /// Generated tokens for the tg test, comma-separated for several tests (0 = skip)
        #[arg(short = 'n', long = "n-gen", value_delimiter = ',', default_value = "64")]
        tg: Vec<usize>,
        /// Context positions filled (untimed) before each test, as llama-bench's -d;
        /// comma-separated to run every test after each depth
        #[arg(short = 'd', long = "n-depth", value_delimiter = ',', default_value = "0")]
        depth: Vec<usize>,
        /// Thread counts, comma-separated
        #[arg(short = 't', long = "threads", value_delimiter = ',', default_value = "1,2")]
        threads: Vec<usize>,
        /// Timed repetitions per test
        #[arg(short = 'r', long = "repetitions", default_value_t = 3)]
        reps: usize,
        /// Print a JSON array instead of a table
        #[arg(long)]
        json: bool,
        /// KV cache type: f32 (exact, as the reference), or f16 (half the memory and the bytes read per token)
        #[arg(long = "cache-type", value_enum, default_value_t = KvType::F32)]
        kv: KvType,
        /// Prompt chunk size: tokens that go through the layers together (the logits do not depend on it)
        #[arg(short = 'b', long = "batch-size", default_value_t = tern::model::DEFAULT_BATCH)]
        batch: usize,
    },
    /// Check the structure and every checksum of a .tern file
    Verify { file: PathBuf },
    /// Print a .tern file's config and tensor table
    Inspect { file: PathBuf },
}

#[derive(clap::Args)]
struct GenerateArgs {
    model: PathBuf,
    /// The prompt text
    #[arg(short, long, conflicts_with = "prompt_file", required_unless_present = "prompt_file")]
    prompt: Option<String>,
    /// Read the prompt from a file (`-` for stdin)
    #[arg(long)]
    prompt_file: Option<PathBuf>,
    /// Tokens to generate at most; -1: until EOS or the end of the context
    #[arg(short = 'n', long = "n-predict", default_value_t = 128, allow_negative_numbers = true)]
    n: i64,
    /// Context positions, prompt included (default: the model's)
    #[arg(short = 'c', long = "ctx-size")]
    ctx_size: Option<usize>,
    #[command(flatten)]
    sampling: sampling_args::SamplingArgs,
    /// Stop when the text contains this string (repeatable)
    #[arg(long)]
    stop: Vec<String>,
    /// Worker threads (default: the physical cores this process may use)
    #[arg(long)]
    threads: Option<usize>,
    /// Check every tensor checksum before running
    #[arg(long)]
    verify: bool,
    /// KV cache type: f32 (exact, as the reference), or f16 (half the memory and the bytes read per token)
    #[arg(long = "cache-type", value_enum, default_value_t = KvType::F32)]
    kv: KvType,
    /// Prompt chunk size: tokens that go through the layers together (the logits do not depend on it)
    #[arg(short = 'b', long = "batch-size", default_value_t = tern::model::DEFAULT_BATCH)]
    batch: usize,
}

#[derive(clap::Args)]
struct ServeArgs {
    model: PathBuf,
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port; the startup line says which)
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Requests decoded together, each in a slot with its own KV cache
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Context positions of each slot, prompt included (default: the model's, at most 4096)
    #[arg(short = 'c', long = "ctx-size")]
    ctx_size: Option<usize>,
    /// Requests that may wait for a free slot; more get 503
    #[arg(long, default_value_t = 16)]
    queue: usize,
    /// Require `Authorization: Bearer KEY` on /v1/*
    #[arg(long)]
    api_key: Option<String>,
    /// Worker threads (default: the physical cores this process may use)
    #[arg(long)]
    threads: Option<usize>,
    /// KV cache type: f32 (exact, as the reference), or f16 (half the memory and the bytes read per token)
    #[arg(long = "cache-type", value_enum, default_value_t = KvType::F32)]
    kv: KvType,
}

fn cmd_serve(args: ServeArgs) -> Result<()> {
    tern::serve::run(tern::serve::ServeOptions {
        model: args.model,
        host: args.host,
        port: args.port,
        parallel: args.parallel,
        ctx: args.ctx_size,
        queue: args.queue,
        api_key: args.api_key,
        threads: thread_count(args.threads)?,
        kv_type: args.kv,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => with_threads(args.threads, |n| cmd_generate(args, n)),
        Command::Chat(args) => with_threads(args.threads, |_| chat_cli::run(args)),
        // The engine thread runs the pool of its own.
        Command::Serve(args) => cmd_serve(args),
        Command::Logits { model, tokens, all, threads, batch } => {
            with_threads(threads, |_| cmd_logits(&model, &tokens, all, batch))
        }
        Command::Tokenize { model, text } => cmd_tokenize(&model, &text),
        Command::Perplexity { model, text_file, ctx, json, threads, kv, batch } => {
            with_threads(threads, |_| cmd_perplexity(&model, &text_file, ctx, json, kv, batch))
        }
        Command::Bench { model, pp, tg, depth, threads, reps, json, kv, batch } => {
            cmd_bench(&model, [&pp, &tg, &depth], &threads, reps, json, kv, batch)
        }
        Command::Verify { file } => cmd_verify(&file),
        Command::Inspect { file } => cmd_inspect(&file),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Ctrl-C in generate, after the line was ended and the stats printed.
        Err(e) if e.is::<Interrupted>() => ExitCode::from(130),
        // A closed stdout (e.g. `| head`) is the reader's choice, not a failure.
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tern: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the command `f` with `threads` threads (default: [`tern::cpus::default_threads`]).
fn with_threads<T: Send>(threads: Option<usize>, f: impl FnOnce(usize) -> Result<T> + Send) -> Result<T> {
    let n = thread_count(threads)?;
    tern::pool::with_threads(n, || f(n)).context("starting worker threads")?
}

/// The `--threads` given (checked, with a warning above the CPUs here), or the default.
fn thread_count(threads: Option<usize>) -> Result<usize> {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n = threads.unwrap_or_else(tern::cpus::default_threads);
    if n == 0 {
        bail!("--threads must be at least 1");
    }
    if n > logical {
        eprintln!("tern: warning: --threads {n} is more than the {logical} CPUs here; expect it to be slower");
    }
    Ok(n)
}

fn open_model(path: &Path, verify: bool) -> Result<(Model, TextTokenizer)> {
    let s = Session::open(path, verify)?;
    Ok((s.model, s.tok))
}

fn read_prompt(args: &GenerateArgs) -> Result<String> {
    let (bytes, what) = match (&args.prompt, &args.prompt_file) {
        (Some(p), _) => return Ok(p.clone()),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut b = Vec::new();
            std::io::stdin().read_to_end(&mut b).context("reading the prompt from stdin")?;
            (b, "stdin".to_string())
        }
        (None, Some(path)) => {
            let b = std::fs::read(path).with_context(|| format!("reading prompt file {}", path.display()))?;
            (b, path.display().to_string())
        }
        (None, None) => bail!("give --prompt TEXT or --prompt-file PATH"),
    };
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!("prompt from {what} is not valid UTF-8 (bad byte at offset {})", e.utf8_error().valid_up_to())
    })
}

fn cmd_generate(args: GenerateArgs, threads: usize) -> Result<()> {
    let prompt = read_prompt(&args)?;
    let t0 = Instant::now();
    let session = Session::open(&args.model, args.verify)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let max_ctx = session.model.config().max_positions as usize;
    let ctx = args.ctx_size.unwrap_or(max_ctx);
    if ctx == 0 || ctx > max_ctx {
        bail!("--ctx-size {ctx} is outside 1..={max_ctx} (the model's context)");
    }
    let ids = session.prompt_ids(&prompt)?;
    let n_prompt = ids.len();
    let max_new = match args.n {
        -1 => ctx.saturating_sub(n_prompt),
        n if n >= 0 => n as usize,
        n => bail!("-n {n}: give a number of tokens ≥ 0, or -1 to generate until EOS or the end of the context"),
    };
    if args.ctx_size.is_some() && n_prompt + max_new > ctx {
        bail!(
            "the prompt ({n_prompt} tokens) plus -n {max_new} needs {} positions, but --ctx-size is {ctx}; \
             shorten the prompt, lower -n or raise --ctx-size",
            n_prompt + max_new
        );
    }
    let (sampling, seed) = args.sampling.request();
    let req = Request { max_new, sampling, seed, stop: args.stop.clone(), kv_type: args.kv };
    // Every check before anything is written.
    let (ids, mut opts) = session.prepare_ids(ids, &req, ctx)?;
    opts.batch = tern::args::check_batch(args.batch)?;
    let (model, tok, seed) = (&session.model, &session.tok, opts.seed);
    let interrupted = sampling_args::stop_on_ctrl_c()?;
    // Test hook, read here only: a pause after each token, so that tests can press Ctrl-C
    // half-way through a generation (tests/safety.rs).
    let pause = std::env::var("TERN_GENERATE_PAUSE_MS").ok().and_then(|v| v.parse().ok());
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    out.write_all(prompt.as_bytes())?;
    out.flush()?;
    let stats = generate(model, tok, &ids, &opts, &mut |piece| {
        out.write_all(piece.as_bytes())?;
        out.flush()?;
        if let Some(ms) = pause {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        if interrupted.load(Ordering::SeqCst) {
            return Err(Interrupted.into());
        }
        Ok(())
    })?;
    writeln!(out)?;
    eprintln!(
        "load {load_ms:.0} ms | prompt {} tok, {:.1} tok/s | generated {} tok, {:.1} tok/s | {threads} threads ({}), {} kernels, seed {seed}",
        stats.prompt_tokens,
        stats.prompt_tps(),
        stats.gen_tokens,
        stats.gen_tps(),
        tern::pool::current_name(),
        model.kernels().name(),
    );
    if interrupted.load(Ordering::SeqCst) {
        return Err(Interrupted.into());
    }
    Ok(())
}

fn cmd_logits(path: &Path, tokens: &[u32], all: bool, batch: usize) -> Result<()> {
    let batch = tern::args::check_batch(batch)?;
    let (model, _) = open_model(path, false)?;
    let c = model.config();
    if tokens.len() > c.max_positions as usize {
        bail!("--tokens has {} ids, but the model's context is {} positions", tokens.len(), c.max_positions);
    }
    if let Some(bad) = tokens.iter().find(|&&t| t >= c.vocab_size) {
        bail!("--tokens: token id {bad} is not below the model's vocabulary size {}", c.vocab_size);
    }
    let l = tern::session::logits(&model, tokens, all, c.max_positions as usize, batch)?;
    let rows: Vec<&[f32]> = l.data.chunks(l.vocab).collect();
    let json = serde_json::json!({ "tokens": tokens, "logits": rows });
    writeln!(std::io::stdout().lock(), "{json}")?;
    Ok(())
}

fn cmd_perplexity(
    path: &Path,
    text_file: &Path,
    ctx: Option<usize>,
    json: bool,
    kv: KvType,
    batch: usize,
) -> Result<()> {
    let batch = tern::args::check_batch(batch)?;
    let bytes = std::fs::read(text_file).with_context(|| format!("reading {}", text_file.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is not valid UTF-8 (bad byte at offset {})",
            text_file.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    let (model, tok) = open_model(path, false)?;
    let ids = tok.encode_plain(&text)?;
    if ids.is_empty() {
        bail!("{}: has no text to score (0 tokens)", text_file.display());
    }
    let ctx = ctx.unwrap_or(model.config().max_positions as usize);
    let bar = if std::io::stderr().is_terminal() { ProgressBar::new(ids.len() as u64) } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} tokens {elapsed} eta {eta}").expect("template"));
    let t0 = Instant::now();
    let p = tern::perplexity::perplexity(&model, &ids, ctx, kv, batch, &mut |n| bar.set_position(n as u64))?;
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let out = &mut std::io::stdout().lock();
    if json {
        let v = serde_json::json!({ "ppl": p.ppl, "nats_per_token": p.nats_per_token, "tokens": p.tokens });
        writeln!(out, "{v}")?;
    } else {
        writeln!(
            out,
            "ppl {:.4} | {:.4} nats/token | {} tokens scored | {:.1} tok/s (windows of {ctx})",
            p.ppl,
            p.nats_per_token,
            p.tokens,
            p.tokens as f64 / secs
        )?;
    }
    Ok(())
}

/// `sizes`: the -p, -n and -d values.
fn cmd_bench(
    path: &Path,
    sizes: [&[usize]; 3],
    threads: &[usize],
    reps: usize,
    json: bool,
    kv: KvType,
    batch: usize,
) -> Result<()> {
    let [pp, tg, depths] = sizes;
    let batch = tern::args::check_batch(batch)?;
    let (model, _) = open_model(path, false)?;
    // Every depth's arguments first, so that a bad one fails before hours of tests.
    for &depth in depths {
        tern::bench::check(&model, pp, tg, depth, threads, reps)?;
    }
    let mut results = Vec::new();
    for &depth in depths {
        results.extend(tern::bench::bench(&model, pp, tg, depth, threads, reps, kv, batch)?);
    }
    // Files under two huge pages cannot use them; say nothing of those.
    let big = model.file().len() >= 4 << 20;
    if let Some(huge) = tern::bench::huge_page_bytes(model.file().bytes()).filter(|_| big) {
        eprintln!(
            "huge pages: {:.1} of the file's {:.1} MB are mapped in 2 MiB pages{}",
            huge as f64 / 1e6,
            model.file().len() as f64 / 1e6,
            if huge == 0 { " (decode is slower so: see README.md, Speed)" } else { "" }
        );
    }
    let tg = tern::bench::nonzero(tg);
    if !tg.is_empty() {
        let bandwidths = tern::bench::bandwidths(&model, threads, reps)?;
        for &depth in depths {
            for &tg in &tg {
                print_roofline(&model, &results, &bandwidths, depth, tg, kv);
            }
        }
    }
    let out = &mut std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(&results)?)?;
        return Ok(());
    }
    // The cache type, when not the default, goes with the kernels (the columns stay llama-bench's).
    let kernels = match kv {
        KvType::F32 => model.kernels().name().to_string(),
        _ => format!("{}, {} KV", model.kernels().name(), kv.name()),
    };
    writeln!(out, "| model | size | kernels | threads | test | t/s |")?;
    writeln!(out, "|---|---|---|---|---|---|")?;
    for r in &results {
        writeln!(
            out,
            "| {} | {:.1} MiB | {} | {} | {} | {:.2} ± {:.2} |",
            path.file_name().unwrap_or_default().to_string_lossy(),
            r.model_bytes as f64 / (1 << 20) as f64,
            kernels,
            r.threads,
            r.test,
            r.tokens_per_s,
            r.sd
        )?;
    }
    Ok(())
}

/// On stderr, the decode roofline of tg`tg` after `depth` positions at each thread count:
/// the bytes a step reads against the streaming `bandwidths` measured after the tests, and
/// each repetition against the probes beside it.
fn print_roofline(
    model: &Model,
    results: &[BenchResult],
    bandwidths: &[(usize, f64)],
    depth: usize,
    tg: usize,
    kv: KvType,
) {
    let weights = tern::bench::decode_bytes(model) as f64;
    let kv_read = tern::bench::kv_bytes(model, depth, tg, kv) as f64;
    let test = tern::bench::test_name("tg", tg, depth);
    let per_token = weights + kv_read;
    for &(t, bw) in bandwidths {
        let ceiling = bw / per_token;
        let result = results.iter().find(|r| r.threads == t && r.test == test);
        let got = result.map_or(0.0, |r| r.tokens_per_s);
        eprintln!(
            "roofline, {t} thread(s): a decode step reads {:.1} MB of weights + {:.1} MB of {} KV cache (mean over \
             {test}); streaming the model read {:.2} GB/s -> ceiling {ceiling:.1} tok/s; {test} reached {got:.1} \
             tok/s ({:.0}% of it)",
            weights / 1e6,
            kv_read / 1e6,
            kv.name(),
            bw / 1e9,
            100.0 * got / ceiling
        );
        // Each repetition against the probes beside it: the machine's bandwidth moves
        // within seconds, so the probe above (after every test) may see another moment.
        let paired: Vec<String> = result
            .map_or(&[][..], |r| &r.paired[..])
            .iter()
            .map(|&(tps, bw)| {
                format!("{:.0}% of {:.1} tok/s ({:.2} GB/s)", 100.0 * tps * per_token / bw, bw / per_token, bw / 1e9)
            })
            .collect();
        if !paired.is_empty() {
            eprintln!("  {test} repetitions against the probes just before and after each: {}", paired.join(", "));
        }
    }
}

fn cmd_tokenize(path: &Path, text: &str) -> Result<()> {
    let file = ModelFile::open(path)?;
    let tok = TextTokenizer::from_json(file.tokenizer_json(), file.config().vocab_size)?;
    writeln!(std::io::stdout().lock(), "{}", serde_json::to_string(&tok.encode(text)?)?)?;
    Ok(())
}

fn cmd_verify(path: &Path) -> Result<()> {
    let t0 = Instant::now();
    let file = ModelFile::open(path)?;
    file.verify()?;
    writeln!(
        std::io::stdout().lock(),
        "OK: {} ({} tensors, {} bytes, every checksum and padding byte checked in {:.0} ms)",
        path.display(),
        file.tensors().len(),
        file.len(),
        t0.elapsed().as_secs_f64() * 1e3
    )?;
    Ok(())
}

fn cmd_inspect(path: &Path) -> Result<()> {
    let file = ModelFile::open(path)?;
    let c = file.config();
    let out = &mut std::io::stdout().lock();
    let version = tern_format::read_version(file.bytes())?;
    writeln!(out, "file          {} ({} bytes, format version {version})", path.display(), file.len())?;
    writeln!(out, "arch          {:?}, activation {:?}", c.arch, c.activation)?;
    writeln!(out, "vocab         {}", c.vocab_size)?;
    writeln!(out, "hidden        {} (intermediate {})", c.hidden_size, c.intermediate_size)?;
    writeln!(out, "layers        {}", c.n_layers)?;
    writeln!(out, "heads         {} (kv heads {}, head dim {})", c.n_heads, c.n_kv_heads, c.head_dim)?;
    writeln!(out, "context       {}", c.max_positions)?;
    writeln!(out, "rope theta    {}, rms eps {}", c.rope_theta, c.rms_eps)?;
    writeln!(
        out,
        "sub-norms     attn {}, ffn {}; output tied to embedding: {}",
        c.attn_sub_norm, c.ffn_sub_norm, c.tied_output
    )?;
    writeln!(out, "weights       {}", c.weights_source.name())?;
    writeln!(out, "scale         {}", c.scale_convention.name())?;
    let norms = c.linear.norm_eps.map_or("none".to_string(), |e| format!("eps {e}"));
    writeln!(out, "per-linear    input norms {norms}; bias attn {}, mlp {}", c.linear.attn_bias, c.linear.mlp_bias)?;
    let id = |x: Option<u32>| x.map_or("-".to_string(), |v| v.to_string());
    let eos: Vec<String> = c.eos_ids().map(|e| e.to_string()).collect();
    let eos = if eos.is_empty() { "-".to_string() } else { eos.join(" ") };
    writeln!(out, "tokens        bos {}, eos {eos}, pad {}", id(c.bos_id), id(c.pad_id))?;
    let text = |x: &Option<String>| x.as_deref().map_or("-".to_string(), |t| format!("{t:?}"));
    writeln!(out, "special text  bos {}, eos {}", text(&c.chat.bos_token), text(&c.chat.eos_token))?;
    let template = c.chat.chat_template.as_deref().map_or("none".to_string(), |t| format!("{} bytes", t.len()));
    writeln!(out, "chat template {template}")?;
    let g = c.generation;
    writeln!(
        out,
        "sampling      temp {}, top-k {}, top-p {}, repeat penalty {}",
        g.temperature, g.top_k, g.top_p, g.repeat_penalty
    )?;
    writeln!(out, "tokenizer     {} bytes of tokenizer.json", file.tokenizer_json().len())?;
    writeln!(out)?;
    writeln!(out, "{:<28} {:<18} {:<5} {:>12} {:>12}", "tensor", "shape", "enc", "scale", "bytes")?;
    for t in file.tensors() {
        let scale = if t.encoding == tern_format::Encoding::T2 { format!("{:.6e}", t.scale) } else { "-".into() };
        writeln!(
            out,
            "{:<28} {:<18} {:<5} {:>12} {:>12}",
            t.name,
            t.shape.to_string(),
            t.encoding.name(),
            scale,
            t.length
        )?;
    }
    Ok(())
}
