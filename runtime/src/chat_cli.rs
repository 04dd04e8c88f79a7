//! `tern chat`: a conversation on the terminal (line editing, history), or one user turn
//! per line of a piped stdin with the replies on stdout.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use tern::chat::{Chat, ChatOptions, Finish};
use tern::chat_template;
use tern::KvType;

#[derive(clap::Args)]
pub struct ChatArgs {
    model: PathBuf,
    /// The system prompt (kept when old turns are dropped to make room)
    #[arg(long)]
    system: Option<String>,
    /// Context positions for the whole conversation (default: the model's)
    #[arg(short = 'c', long = "ctx-size")]
    ctx_size: Option<usize>,
    /// Tokens a reply may have at most; -1: until the end of the turn or of the context
    #[arg(short = 'n', long = "n-predict", default_value_t = -1, allow_negative_numbers = true)]
    n: i64,
    #[command(flatten)]
    sampling: crate::sampling_args::SamplingArgs,
    /// Worker threads (default: the physical cores this process may use)
    #[arg(long)]
    pub threads: Option<usize>,
    /// KV cache type: f32 (exact, as the reference), or f16 (half the memory)
    #[arg(long = "cache-type", value_enum, default_value_t = KvType::F32)]
    kv: KvType,
}

/// Runs the conversation until `/exit`, end of input, or a second Ctrl-C while a reply runs.
pub fn run(args: ChatArgs) -> Result<()> {
    let session = tern::session::Session::open(&args.model, false)?;
    let (model, tok) = (&session.model, &session.tok);
    let c = model.config();
    let (sampling, seed) = args.sampling.request();
    let sampler = sampling.resolve(&c.generation)?;
    let seed = tern::args::seed_or_clock(seed);
    let max_reply = match args.n {
        -1 => None,
        n if n >= 0 => Some(n as usize),
        n => bail!("-n {n}: give a number of tokens ≥ 0, or -1 for no limit"),
    };
    let max_ctx = c.max_positions as usize;
    let ctx = args.ctx_size.unwrap_or(max_ctx);
    if ctx < 2 || ctx > max_ctx {
        bail!("--ctx-size {ctx} is outside 2..={max_ctx} (the model's context)");
    }
    let template = chat_template::for_model(model, tok)?;
    let opts = ChatOptions { sampler, seed, max_reply, ctx, kv_type: args.kv, system: args.system.clone() };
    let mut chat = Chat::new(model, tok, template, opts)?;

    // Ctrl-C while a reply runs stops that reply; a second one before the reply ends exits (130).
    let cancel = crate::sampling_args::stop_on_ctrl_c()?;
    if chat.is_fallback() {
        eprintln!(
            "tern: this model file has no chat template; using tern's plain \"Role: text\" fallback (see README)"
        );
    }

    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let mut input = Input::new(interactive)?;
    if interactive {
        eprintln!("tern chat: /reset forgets the conversation, /exit (or Ctrl-D) quits, Ctrl-C stops a reply");
    }
    loop {
        // While waiting for input, a Ctrl-C (a signal only when stdin is piped) exits at once.
        cancel.store(true, Ordering::Relaxed);
        let Some(line) = input.read()? else { break };
        let line = line.trim_end_matches(['\r', '\n']);
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                chat.reset();
                eprintln!("tern: conversation reset");
                continue;
            }
            _ => {}
        }
        cancel.store(false, Ordering::Relaxed);
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        let reply = chat.reply(line, &cancel, &mut |piece| {
            out.write_all(piece.as_bytes())?;
            out.flush()?;
            Ok(())
        });
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                // A message that cannot fit, or a template that refuses it: say so, keep going.
                eprintln!("tern: error: {e:#}");
                continue;
            }
        };
        writeln!(out)?;
        out.flush()?;
        if reply.dropped_turns > 0 {
            eprintln!("tern: the context was full: dropped the {} oldest turns", reply.dropped_turns);
        }
        match reply.finish {
            Finish::Cancelled => eprintln!("tern: reply stopped"),
            Finish::Length if max_reply.is_none_or(|m| reply.reply_tokens < m) => {
                eprintln!("tern: the context is full; the next turn drops the oldest ones")
            }
            _ => {}
        }
    }
    Ok(())
}

/// User input: rustyline on a terminal, lines of stdin otherwise.
enum Input {
    Terminal(rustyline::DefaultEditor),
    Piped(std::io::StdinLock<'static>),
}

impl Input {
    fn new(interactive: bool) -> Result<Self> {
        Ok(if interactive {
            Input::Terminal(rustyline::DefaultEditor::new().context("starting line editing")?)
        } else {
            Input::Piped(std::io::stdin().lock())
        })
    }

    /// The next line, or `None` at the end of input.
    fn read(&mut self) -> Result<Option<String>> {
        match self {
            Input::Terminal(ed) => loop {
                match ed.readline("> ") {
                    Ok(line) => {
                        let _ = ed.add_history_entry(line.as_str());
                        return Ok(Some(line));
                    }
                    // Ctrl-C at the prompt clears the line, as in a shell.
                    Err(rustyline::error::ReadlineError::Interrupted) => continue,
                    Err(rustyline::error::ReadlineError::Eof) => return Ok(None),
                    Err(e) => return Err(e).context("reading from the terminal"),
                }
            },
            Input::Piped(stdin) => {
                let mut line = String::new();
                let n = stdin.read_line(&mut line).context("reading stdin")?;
                Ok((n > 0).then_some(line))
            }
        }
    }
}
