//! Command-line definitions (the contract in CLI.md). One args struct per command; no logic here.
use crate::net::config::NetConfig;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// `--version`: the release and what this binary can compute on (the `cuda` cargo feature).
const VERSION: &str = if cfg!(feature = "cuda") {
    concat!(
        env!("CARGO_PKG_VERSION"),
        " (features: cuda; runs on CPU and CUDA GPUs)"
    )
} else {
    concat!(
        env!("CARGO_PKG_VERSION"),
        " (features: none; CPU only, build with --features cuda for GPUs)"
    )
};

#[derive(Parser, Debug)]
#[command(
    name = "llamactl",
    version = VERSION,
    about = "Download, verify, inspect, reshard, convert, tokenize and run Llama 3 weights, and manage the models on disk.",
    after_help = "Models live in Meta's checkpoint folder ($LLAMA_STACK_CONFIG_DIR/checkpoints, default \
~/.llama/checkpoints, shared with Meta's `llama` CLI) and the Hugging Face cache ($HF_HUB_CACHE or \
$HF_HOME/hub). Commands that take a model accept a catalog name or descriptor (8B-instruct, \
Llama3.1-8B-Instruct), a Hub repo id (meta-llama/Llama-3.2-1B[@REV], from the cache) or a path.\n\n\
Exit codes: 0 ok, 1 a check failed, 2 bad usage or input, 3 refused by the remote side, 4 network failure.\n\n\
Built with Meta Llama 3."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Fetch Llama 3 model sets from Meta's emailed signed URL (replaces download.sh).
    Download(DownloadArgs),
    /// Fetch a repository from the Hugging Face Hub into the shared HF cache.
    Pull(PullArgs),
    /// Validate a checkpoint for CI: checksums, structure, numbers.
    Verify(VerifyArgs),
    /// Show what is in a checkpoint directory or file.
    Inspect(InspectArgs),
    /// Change a Meta checkpoint's model-parallel size, streamed and bit-exact.
    Reshard(ReshardArgs),
    /// Convert between Meta checkpoints and Hugging Face safetensors, or to one GGUF file (f32, f16,
    /// bf16 or a llama-quantize type such as q4_k_m).
    Convert(ConvertArgs),
    /// Encode or decode text, or format a chat dialog, with the model's tokenizer.
    Tokenize(TokenizeArgs),
    /// Run a model (checkpoint dir or GGUF file, quantized too): streamed completion, a chat REPL,
    /// or a CI check.
    Run(RunArgs),
    /// The catalog of known models and what is present locally (--downloaded: what is on disk).
    List(ListArgs),
    /// What is on disk: every model in the store, the HF cache and --dir folders, sizes, verified state.
    Ls(LsArgs),
    /// One model in detail: params, dtypes, shards, tokenizer, stop tokens, chat template, defaults.
    Show(ShowArgs),
    /// Remove a model: a store folder, an HF repo or one revision of it, a GGUF file.
    Rm(RmArgs),
    /// Remove what interrupted runs and old revisions leave behind.
    Prune(PruneArgs),
    /// The whole pipeline on the tiny checkpoint shipped in testdata/.
    Demo(DemoArgs),
}

/// `download --help`'s text above the network settings (rendered from their defaults).
const DOWNLOAD_HELP: &str = "Example:\n  llamactl download --url \"$URL\" --models 8B-instruct --dir ~/llama\n\n\
Re-running with the same or a new link resumes: partial files are kept as NAME.part and each file\n\
gets its final name only after its md5 matches checklist.chk.\n\n\
Manifest (--manifest FILE): {\"models\": [\"8B\"], \"url\": \"https://.../*?Policy=...\",\n\
  \"files\": {\"Meta-Llama-3-8B/params.json\": \"https://...\"}, \"sizes\": {...}, \"expires_on\": \"2026-05-01T00:00:00Z\"}\n\n\
Environment: LLAMACTL_PROGRESS_INTERVAL_MS (ms between plain progress lines off a terminal, 10000).\n\
Network settings, shared with pull (docs/CLI.md):\n";

#[derive(Args, Debug, Clone)]
#[command(after_help = format!("{DOWNLOAD_HELP}{}", NetConfig::env_help(true)))]
pub struct DownloadArgs {
    /// The signed URL from Meta's email (or env LLAMA_DOWNLOAD_URL); prompted for when absent.
    #[arg(long, env = "LLAMA_DOWNLOAD_URL", hide_env_values = true)]
    pub url: Option<String>,
    /// Comma-separated model names (8B,8B-instruct,70B,70B-instruct); asked for when absent.
    #[arg(long)]
    pub models: Option<String>,
    /// Target directory, in download.sh's layout (`--dir .` is what download.sh does). Default:
    /// Meta's store, $LLAMA_STACK_CONFIG_DIR/checkpoints/DESCRIPTOR (~/.llama/checkpoints).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Files fetched in parallel.
    #[arg(long, default_value_t = 4)]
    pub jobs: usize,
    /// Ranged connections per large file (segments of at least 64 MiB). Each connection is a
    /// separate request on the link, which may count against its download limit.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// A JSON manifest of models and file URLs instead of one signed URL.
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Skip the md5 check against checklist.chk.
    #[arg(long)]
    pub no_verify: bool,
}

/// `pull --help`'s text above the network settings.
const PULL_HELP: &str = "Example:\n  llamactl pull meta-llama/Meta-Llama-3-8B-Instruct --include 'original/*'\n\n\
Environment (read as huggingface_hub reads them):\n  HF_TOKEN, HF_HOME, HF_HUB_CACHE, HF_ENDPOINT, HF_HUB_OFFLINE=1\n\
Network settings, shared with download (docs/CLI.md):\n";

#[derive(Args, Debug, Clone)]
#[command(after_help = format!("{PULL_HELP}{}", NetConfig::env_help(false)))]
pub struct PullArgs {
    /// Repository id, e.g. meta-llama/Meta-Llama-3-8B.
    pub repo_id: String,
    /// Branch, tag or commit.
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// Only files matching these globs.
    #[arg(long)]
    pub include: Vec<String>,
    /// Skip files matching these globs.
    #[arg(long)]
    pub exclude: Vec<String>,
    /// Put the files here instead of the HF cache.
    #[arg(long)]
    pub local_dir: Option<PathBuf>,
    /// Hugging Face token (else HF_TOKEN, else the token file under HF_HOME). Never printed.
    #[arg(long)]
    pub token: Option<String>,
    /// Files fetched in parallel.
    #[arg(long, default_value_t = 4)]
    pub jobs: usize,
}

#[derive(Args, Debug, Clone)]
#[command(after_help = "Example:\n  llamactl verify Meta-Llama-3-8B --json --deep")]
pub struct VerifyArgs {
    /// A Meta checkpoint dir or an HF dir.
    pub dir: PathBuf,
    /// Print the JSON report on stdout.
    #[arg(long)]
    pub json: bool,
    /// Also scan every value for NaN/Inf (the --json report adds each tensor's min, max, mean and
    /// std).
    #[arg(long)]
    pub deep: bool,
    /// Skip the checklist.chk md5 pass.
    #[arg(long)]
    pub no_md5: bool,
    /// Files hashed in parallel (default: number of cores).
    #[arg(long)]
    pub jobs: Option<usize>,
}

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  llamactl inspect Meta-Llama-3-70B\n  llamactl inspect Meta-Llama-3-8B/consolidated.00.pth --json\n\n\
A Meta dir of several shards is listed as the model's tensors, each once with its whole shape and\n\
how the ranks split it (rows, cols, replicated); --shards lists every shard's own tensors."
)]
pub struct InspectArgs {
    /// A Meta checkpoint dir, an HF dir, a GGUF file, or one .pth / .safetensors file.
    pub path: PathBuf,
    /// Print a JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
    /// A multi-shard Meta dir: every shard's tensors with their own shapes.
    #[arg(long)]
    pub shards: bool,
}

#[derive(Args, Debug, Clone)]
#[command(after_help = "Example:\n  llamactl reshard --mp 2 Meta-Llama-3-70B Meta-Llama-3-70B-mp2")]
pub struct ReshardArgs {
    /// Target model-parallel size (number of output shards).
    #[arg(long)]
    pub mp: usize,
    /// Source Meta checkpoint dir.
    pub src_dir: PathBuf,
    /// Destination dir (must not exist or be empty unless --force).
    pub dst_dir: PathBuf,
    /// Replace a non-empty destination.
    #[arg(long)]
    pub force: bool,
    /// Shards written in parallel (default: number of cores, at most 6; each takes about 25 MiB).
    #[arg(long)]
    pub jobs: Option<usize>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvertTo {
    Hf,
    Meta,
    /// One GGUF file for llama.cpp, Ollama, LM Studio.
    Gguf,
}

/// `--dtype`: a float type, or (--to gguf only) one of llama-quantize's file types, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CastDtype(pub String);

impl CastDtype {
    /// The float type this names, if it is one.
    pub fn float(&self) -> Option<crate::formats::DType> {
        use crate::formats::DType;
        match self.0.to_ascii_lowercase().as_str() {
            "bf16" => Some(DType::BF16),
            "f16" => Some(DType::F16),
            "f32" => Some(DType::F32),
            _ => None,
        }
    }
}

impl std::str::FromStr for CastDtype {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(CastDtype(s.to_string()))
    }
}

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  llamactl convert --to hf Meta-Llama-3-8B Meta-Llama-3-8B-hf\n  llamactl convert --to gguf Meta-Llama-3-8B-Instruct llama3-8b-instruct.gguf --dtype q4_k_m"
)]
pub struct ConvertArgs {
    /// Target layout.
    #[arg(long, value_enum)]
    pub to: ConvertTo,
    /// Source dir (Meta for --to hf, HF for --to meta, either for --to gguf); for --to gguf also
    /// an f32/f16/bf16 GGUF file to quantize.
    pub src_dir: PathBuf,
    /// Destination dir (must not exist or be empty unless --force); for --to gguf the .gguf file
    /// (must not exist unless --force).
    pub dst_dir: PathBuf,
    /// Cast while streaming (default: keep the source dtype): bf16, f16, f32; with --to gguf also
    /// llama-quantize's types (any case): q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k_s, q3_k_m,
    /// q3_k_l, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k.
    #[arg(long)]
    pub dtype: Option<CastDtype>,
    /// Replace a non-empty destination.
    #[arg(long)]
    pub force: bool,
    /// --to hf, --to gguf from a Meta dir: write an instruct (chat) model's stop tokens and chat
    /// template. Default: on when the source directory's name contains "instruct" (as Meta names
    /// them).
    #[arg(long, conflicts_with = "base")]
    pub instruct: bool,
    /// --to hf, --to gguf from a Meta dir: write a base model's stop tokens, whatever the
    /// directory is called.
    #[arg(long)]
    pub base: bool,
    /// --to hf: largest safetensors shard, transformers' rule ("5GB" = 5*10^9 bytes).
    #[arg(long, default_value = "5GB")]
    pub max_shard_size: String,
}

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  llamactl tokenize --model Meta-Llama-3-8B \"This is a test sentence.\"\n  llamactl tokenize --model Meta-Llama-3-8B-Instruct --chat dialog.json\n  echo '[{\"role\":\"user\",\"content\":\"hi\"}]' | llamactl tokenize --tokenizer tokenizer.model --chat\n  llamactl tokenize --tokenizer tokenizer.model --decode 2028 374 264 1296"
)]
pub struct TokenizeArgs {
    /// A tokenizer.model (tiktoken) or tokenizer.json file.
    #[arg(long, conflicts_with = "model")]
    pub tokenizer: Option<PathBuf>,
    /// A model dir; its tokenizer is used.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Input is a JSON dialog (from FILE, else TEXT or stdin); output is the prompt `run --chat`
    /// would feed the model: its text, then its ids.
    #[arg(long, value_name = "FILE", num_args = 0..=1)]
    pub chat: Option<Option<PathBuf>>,
    /// Input is ids (spaces/commas, or a JSON list); output is the text exactly, no newline added.
    #[arg(long)]
    pub decode: bool,
    /// Print {"ids": [...], "count": N} (with --decode or --chat also "text").
    #[arg(long)]
    pub json: bool,
    /// Prepend <|begin_of_text|> (as Meta's encode(bos=True) and a completion prompt do).
    #[arg(long, conflicts_with_all = ["chat", "decode"])]
    pub bos: bool,
    /// Append the end-of-text token.
    #[arg(long, conflicts_with_all = ["chat", "decode"])]
    pub eos: bool,
    /// Treat special-token text such as <|eot_id|> in the input as the special token
    /// (default: plain text, as Meta's tokenizer does for user content).
    #[arg(long, conflicts_with_all = ["chat", "decode"])]
    pub special: bool,
    /// Text (or ids with --decode); stdin when absent. Stdin must be UTF-8.
    pub text: Vec<String>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunDtype {
    Auto,
    F32,
    F16,
    Bf16,
}

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  llamactl run Meta-Llama-3-8B --prompt \"The capital of France is\" --temperature 0\n  llamactl run Meta-Llama-3-8B-Instruct --chat\n  llamactl run Meta-Llama-3-8B --check\n  llamactl run llama3-8b-instruct.Q4_K_M.gguf --chat\n\n\
Completions are printed as they are generated (a batch in order: each waits for the ones before\n\
it); --json prints one document at the end. In --chat, Up/Down recall earlier messages (kept in\n\
$XDG_DATA_HOME/llamactl/chat_history, default ~/.local/share/llamactl/chat_history), a line ending\n\
in \\ continues on the next, and /help lists the commands."
)]
pub struct RunArgs {
    /// The model: a catalog name, a Hub repo id from the cache, a Meta dir (any number of
    /// shards), an HF dir, or a llama-architecture .gguf file (F32, F16, BF16, Q4_0, Q4_1, Q5_0,
    /// Q5_1, Q8_0, Q2_K..Q6_K; tokenizer and chat template from its metadata).
    #[arg(value_name = "MODEL", required_unless_present = "ckpt_dir")]
    pub model: Option<PathBuf>,
    /// The same as MODEL (the name Meta's scripts use).
    #[arg(long, value_name = "MODEL", conflicts_with = "model")]
    pub ckpt_dir: Option<PathBuf>,
    /// Tokenizer file (default: the one inside the checkpoint dir).
    #[arg(long)]
    pub tokenizer_path: Option<PathBuf>,
    /// Prompts to complete, as one batch (repeatable).
    #[arg(long)]
    pub prompt: Vec<String>,
    /// Chat: a REPL on a terminal, or batch chat with --dialogs.
    #[arg(long)]
    pub chat: bool,
    /// A JSON list of dialogs for batch chat completion.
    #[arg(long)]
    pub dialogs: Option<PathBuf>,
    /// Longest sequence (prompt + generation, or a whole chat) the KV cache holds.
    #[arg(long, default_value_t = 512)]
    pub max_seq_len: usize,
    /// Prompts run together; the KV cache is allocated for this many sequences.
    #[arg(long, default_value_t = 4)]
    pub max_batch_size: usize,
    /// Tokens to generate at most, 1 or more (default: max_seq_len - 1).
    #[arg(long)]
    pub max_gen_len: Option<usize>,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.6)]
    pub temperature: f64,
    /// Nucleus sampling: draw from the smallest set of tokens whose probability reaches this.
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f64,
    /// Sampling seed (Meta's generator seeds 1 too, so runs repeat unless you change it).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// auto: GPU 0 when this build has CUDA and a GPU answers, else the CPU (with a note).
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Weight type. auto: on the CPU each matrix stays in its stored type (bf16, f16, f32 or a GGUF
    /// block type), used from the file's memory map where the layout allows; on CUDA, bf16. Activations are f32
    /// on the CPU whatever the choice; f32 is the exactness reference (weights widened in memory).
    #[arg(long, value_enum, default_value_t = RunDtype::Auto)]
    pub dtype: RunDtype,
    /// CPU threads (default: all cores; more than the cores is clamped to them, with a note).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Keep generating past stop tokens, up to --max-gen-len (for benchmarks).
    #[arg(long)]
    pub ignore_eos: bool,
    /// Report the log-probability of each generated token.
    #[arg(long)]
    pub logprobs: bool,
    /// Print a JSON document.
    #[arg(long)]
    pub json: bool,
    /// CI inference check: its own prompts (or the --prompt ones), greedy twice, --max-gen-len
    /// tokens each (default 24); identical and finite, else exit 1. Not with --chat.
    #[arg(long)]
    pub check: bool,
    /// Complete the four example prompts of Meta's example_text_completion.py.
    #[arg(long)]
    pub examples: bool,
}

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Example:\n  llamactl list --dir ~/llama --json\n  llamactl list --downloaded   (the same as `llamactl ls --dir .`)"
)]
pub struct ListArgs {
    /// Where to look for local copies.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Print a JSON document.
    #[arg(long)]
    pub json: bool,
    /// List what is on disk (store, HF cache and --dir) instead of the catalog, as `llamactl ls`.
    #[arg(long)]
    pub downloaded: bool,
}

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  llamactl ls\n  llamactl ls --dir ~/llama --revisions\n  llamactl ls --json | jq '.models[] | select(.verified != \"verified\")'\n\n\
Looks in $LLAMA_STACK_CONFIG_DIR/checkpoints (default ~/.llama/checkpoints), the Hugging Face cache\n\
($HF_HUB_CACHE, else $HF_HOME/hub) and each --dir. Reads directory entries and headers only;\n\
--verify hashes every file."
)]
pub struct LsArgs {
    /// Also look in this folder (a model folder, a .gguf file, or a folder of them); repeatable.
    #[arg(long)]
    pub dir: Vec<PathBuf>,
    /// Print a JSON document.
    #[arg(long)]
    pub json: bool,
    /// One line per HF cache revision under its repo.
    #[arg(long)]
    pub revisions: bool,
    /// Re-check every model: md5s against checklist.chk (recorded when they pass), HF blob
    /// sha256s, GGUF layout. Reads every byte.
    #[arg(long)]
    pub verify: bool,
}

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  llamactl show 8B-instruct\n  llamactl show meta-llama/Llama-3.2-1B --json\n  llamactl show ./model-q8_0.gguf"
)]
pub struct ShowArgs {
    /// A catalog name or descriptor, a Hub repo id (from the HF cache) or a path.
    pub model: PathBuf,
    /// Print a JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  llamactl rm Llama3.2-1B --dry-run\n  llamactl rm meta-llama/Llama-3.2-1B --revision v1 --yes\n  llamactl rm ~/models/llama-q8_0.gguf\n\n\
On a terminal it asks before removing; --yes does not ask. Refused (exit 2) while a download,\n\
pull or convert of the model runs, and for any path that is not a model."
)]
pub struct RmArgs {
    /// A name from `llamactl ls` (descriptor, repo id, file name), a catalog name, or a path.
    pub model: String,
    /// HF cache repos: remove only this revision (a branch, tag, commit or commit prefix); blobs
    /// another revision uses stay.
    #[arg(long)]
    pub revision: Option<String>,
    /// Print what would be removed and the bytes freed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Print a JSON document of what was (or would be) removed.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  llamactl prune --dry-run\n  llamactl prune --partials --revisions\n\n\
Always: temp dirs of dead llamactl runs, HF cache blobs no snapshot uses. Never a running\n\
command's files (its lock, or its part file's lock, is held)."
)]
pub struct PruneArgs {
    /// Also `.part` / `.incomplete` files of downloads whose process is gone (they let a download
    /// resume, so only on request).
    #[arg(long)]
    pub partials: bool,
    /// Also HF revisions no branch or tag points at (in repos where one still does).
    #[arg(long)]
    pub revisions: bool,
    /// Also look in this folder; repeatable.
    #[arg(long)]
    pub dir: Vec<PathBuf>,
    /// List each item and its bytes; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print a JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
#[command(after_help = "Example:\n  llamactl demo")]
pub struct DemoArgs {
    /// Keep the temp dir and print where it is.
    #[arg(long)]
    pub keep: bool,
}
