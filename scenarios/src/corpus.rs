//! Deterministic synthetic workspaces for benchmarks and scenarios.
//!
//! A real `/projects` directory is a few git clones: source trees of many small text files,
//! a `node_modules`-like forest of thousands of tiny files, `.git` pack files (already
//! compressed, so incompressible) and a few large binaries, plus symlinks, executables,
//! empty directories and dotfiles. [`generate`] builds such a tree from a seed and a byte
//! budget; the same seed and scale give the same tree (paths, modes, contents, mtimes) on
//! every run and machine, because every file's bytes come from a PRNG seeded by the corpus
//! seed and the file's own path, never from the order of generation or the clock.
//!
//! [`touch_one_file`] and [`change_fraction`] apply the edits the incremental benchmarks
//! measure; [`tree_summary`] hashes a tree so generation and restores can be checked.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

/// Seed used by `scenarios corpus` and the benchmarks unless told otherwise.
pub const DEFAULT_SEED: u64 = 0x5753_5200_0000_0001;

/// Fixed base for generated mtimes (2023-11-14), so archives of a fresh corpus are identical.
const MTIME_BASE: u64 = 1_700_000_000;

/// What kind of tree to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// The mix of a developer workspace (see the module doc).
    Workspace,
    /// About one tiny file per kilobyte of budget (100k+ files at `small`): the file-count-heavy case.
    ManyFiles,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Workspace => "workspace",
            Profile::ManyFiles => "many-files",
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Profile {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "workspace" => Ok(Profile::Workspace),
            "many-files" => Ok(Profile::ManyFiles),
            _ => bail!("unknown profile {s:?} (expected workspace or many-files)"),
        }
    }
}

/// A byte budget with the name it was asked for by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scale {
    pub label: String,
    pub bytes: u64,
}

impl Scale {
    pub fn bytes(label: &str, bytes: u64) -> Scale {
        Scale {
            label: label.to_string(),
            bytes,
        }
    }
}

impl fmt::Display for Scale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

impl FromStr for Scale {
    type Err = anyhow::Error;
    /// `tiny` (4 MB), `small` (100 MB), `large` (1 GB), `huge` (4 GB), `huge:N` (N GB), or an
    /// explicit `NNNm` / `NNg` (decimal megabytes / gigabytes).
    fn from_str(s: &str) -> Result<Self> {
        const MB: u64 = 1_000_000;
        const GB: u64 = 1_000_000_000;
        let bytes = match s {
            "tiny" => 4 * MB,
            "small" => 100 * MB,
            "large" => GB,
            "huge" => 4 * GB,
            _ => {
                let parse = |n: &str| -> Result<u64> {
                    n.parse::<u64>().with_context(|| format!("bad size {s:?}"))
                };
                if let Some(n) = s.strip_prefix("huge:") {
                    parse(n)? * GB
                } else if let Some(n) = s.strip_suffix('g') {
                    parse(n)? * GB
                } else if let Some(n) = s.strip_suffix('m') {
                    parse(n)? * MB
                } else {
                    bail!("unknown size {s:?} (tiny, small, large, huge, huge:N, NNNm, NNg)")
                }
            }
        };
        if bytes == 0 {
            bail!("size {s:?} is empty");
        }
        Ok(Scale::bytes(s, bytes))
    }
}

/// Counts by category, for the benchmark report.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CorpusStats {
    pub files: u64,
    pub bytes: u64,
    pub dirs: u64,
    pub empty_dirs: u64,
    pub symlinks: u64,
    pub executables: u64,
    /// category -> (files, bytes)
    pub categories: BTreeMap<String, (u64, u64)>,
}

impl CorpusStats {
    /// Files, directories and symlinks.
    pub fn entries(&self) -> u64 {
        self.files + self.dirs + self.symlinks
    }
}

/// A small, fast, well-mixed PRNG (xoshiro256**, seeded with splitmix64). Written here rather
/// than taken from a crate so the byte stream can never change under a dependency update.
#[derive(Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    /// An independent stream for `label` (a path), so contents never depend on generation order.
    pub fn derive(seed: u64, label: &str) -> Rng {
        Rng::new(seed ^ fnv1a(label.as_bytes()))
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `0..n` (n > 0); the tiny modulo bias is irrelevant here.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// Log-uniform in `lo..=hi`: most files small, a long tail of big ones, like real trees.
    pub fn log_size(&mut self, lo: u64, hi: u64) -> u64 {
        let (l, h) = ((lo.max(1) as f64).ln(), (hi.max(1) as f64).ln());
        let u = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        ((l + (h - l) * u).exp() as u64).clamp(lo, hi)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&last[..n]);
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

// ---------------------------------------------------------------------------------------------
// Content generators. Text is built from a shared vocabulary plus per-file identifiers and the
// occasional hash literal, which puts zstd's ratio on it in the 3-5x range of real source code.

const WORDS: &[&str] = &[
    "config", "path", "value", "request", "response", "buffer", "index", "count", "state", "error",
    "result", "handler", "client", "server", "cache", "layer", "digest", "stream", "entry", "node",
    "module", "item", "token", "user", "session", "file", "reader", "writer", "options", "context",
    "event", "message", "queue", "worker", "timer", "target", "source", "format", "parse",
    "render", "update", "create", "delete", "load", "store", "build", "check", "apply", "merge",
    "split", "encode", "decode", "flush", "close", "open", "read", "write", "start", "stop",
    "next", "prev", "first", "last", "len", "size", "data", "name", "id", "key", "map", "list",
    "set", "get", "new", "init", "run", "spawn", "retry", "limit", "offset", "range", "schema",
    "field", "record", "table", "row", "column", "query", "filter", "sort", "group", "batch",
    "chunk", "pool", "thread", "lock", "signal", "socket", "address", "port", "host", "route",
    "policy",
];

#[derive(Clone, Copy)]
enum Lang {
    Rust,
    Js,
    Python,
    Go,
    Shell,
}

impl Lang {
    fn keywords(self) -> &'static [&'static str] {
        match self {
            Lang::Rust => &[
                "fn", "let", "mut", "pub", "impl", "struct", "enum", "match", "if", "else",
                "return", "use", "for", "in", "self", "Some", "None", "Ok", "Err", "&mut",
            ],
            Lang::Js => &[
                "function",
                "const",
                "let",
                "return",
                "if",
                "else",
                "export",
                "import",
                "async",
                "await",
                "class",
                "new",
                "this",
                "null",
                "undefined",
                "typeof",
            ],
            Lang::Python => &[
                "def", "class", "return", "if", "elif", "else", "import", "from", "for", "in",
                "with", "as", "self", "None", "True", "False", "lambda", "yield",
            ],
            Lang::Go => &[
                "func", "var", "const", "return", "if", "else", "for", "range", "type", "struct",
                "defer", "go", "nil", "err", ":=", "chan",
            ],
            Lang::Shell => &[
                "if", "then", "fi", "for", "do", "done", "echo", "local", "export", "case", "esac",
                "test", "exit", "set", "-euo", "pipefail",
            ],
        }
    }

    fn comment(self) -> &'static str {
        match self {
            Lang::Python | Lang::Shell => "#",
            _ => "//",
        }
    }

    fn ext(self) -> &'static str {
        match self {
            Lang::Rust => "rs",
            Lang::Js => "js",
            Lang::Python => "py",
            Lang::Go => "go",
            Lang::Shell => "sh",
        }
    }
}

/// Source-code-like text of exactly `len` bytes.
fn code_text(rng: &mut Rng, lang: Lang, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 128);
    // Identifiers private to this file: what keeps text from compressing like a dictionary.
    let locals: Vec<String> = (0..12)
        .map(|_| {
            let a = rng.pick(WORDS);
            let b = rng.pick(WORDS);
            format!("{a}_{b}{}", rng.below(100))
        })
        .collect();
    let kw = lang.keywords();
    let mut depth = 0usize;
    if matches!(lang, Lang::Shell) {
        out.extend_from_slice(b"#!/usr/bin/env bash\nset -euo pipefail\n");
    }
    while out.len() < len {
        for _ in 0..depth.min(6) {
            out.extend_from_slice(b"    ");
        }
        let ident = |rng: &mut Rng| -> String {
            if rng.chance(40) {
                rng.pick(&locals).clone()
            } else {
                rng.pick(WORDS).to_string()
            }
        };
        match rng.below(20) {
            0..=2 => {
                out.extend_from_slice(lang.comment().as_bytes());
                for _ in 0..rng.range(3, 10) {
                    out.push(b' ');
                    out.extend_from_slice(rng.pick(WORDS).as_bytes());
                }
            }
            3..=4 if depth < 5 => {
                let line = format!(
                    "{} {}({}, {}) {{",
                    rng.pick(kw),
                    ident(rng),
                    ident(rng),
                    ident(rng)
                );
                out.extend_from_slice(line.as_bytes());
                depth += 1;
            }
            5..=6 if depth > 0 => {
                out.push(b'}');
                depth -= 1;
            }
            7 => {
                // Hashes, ids and version strings: the incompressible specks of real code.
                let mut h = [0u8; 12];
                rng.fill(&mut h);
                let line = format!("{} {} = \"{}\";", rng.pick(kw), ident(rng), hex::encode(h));
                out.extend_from_slice(line.as_bytes());
            }
            _ => {
                let line = format!(
                    "{} {} = {}.{}({}, {});",
                    rng.pick(kw),
                    ident(rng),
                    ident(rng),
                    ident(rng),
                    ident(rng),
                    rng.below(4096)
                );
                out.extend_from_slice(line.as_bytes());
            }
        }
        out.push(b'\n');
    }
    out.truncate(len);
    out
}

/// Markdown-ish prose of exactly `len` bytes.
fn prose_text(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    out.extend_from_slice(b"# ");
    while out.len() < len {
        let words = rng.range(6, 16);
        for i in 0..words {
            if i > 0 {
                out.push(b' ');
            }
            out.extend_from_slice(rng.pick(WORDS).as_bytes());
        }
        out.extend_from_slice(if rng.chance(15) { b".\n\n" } else { b". " });
    }
    out.truncate(len);
    out
}

/// Minified JavaScript: one long line, denser than hand-written code.
fn minified_text(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    while out.len() < len {
        let a = (b'a' + rng.below(26) as u8) as char;
        let b = (b'a' + rng.below(26) as u8) as char;
        let s = format!(
            "function {a}{b}(e,t){{return e.{}(t,{})}};var {b}{a}={}[{}];",
            rng.pick(WORDS),
            rng.below(1000),
            rng.pick(WORDS),
            rng.below(64)
        );
        out.extend_from_slice(s.as_bytes());
    }
    out.truncate(len);
    out
}

/// Executable-like bytes: code sections (random), zero padding and repetitive tables;
/// compresses to roughly half, like real binaries.
fn binary_bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    for block in out.chunks_mut(4096) {
        match rng.below(10) {
            0..=4 => rng.fill(block),
            5..=6 => {} // zero padding
            _ => {
                let mut pattern = [0u8; 16];
                rng.fill(&mut pattern);
                for (i, b) in block.iter_mut().enumerate() {
                    *b = pattern[i % 16].wrapping_add((i / 256) as u8);
                }
            }
        }
    }
    out
}

fn random_bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    rng.fill(&mut out);
    out
}

const MIT: &str = "MIT License\n\nCopyright (c) the authors\n\nPermission is hereby granted, free of charge, to any person obtaining a copy\nof this software and associated documentation files (the \"Software\"), to deal\nin the Software without restriction, including without limitation the rights\nto use, copy, modify, merge, publish, distribute, sublicense, and/or sell\ncopies of the Software, and to permit persons to whom the Software is\nfurnished to do so, subject to the following conditions:\n\nThe above copyright notice and this permission notice shall be included in all\ncopies or substantial portions of the Software.\n\nTHE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND.\n";

const HOOK_SAMPLE: &str = "#!/bin/sh\n#\n# An example hook script; to enable it, rename this file without \".sample\".\n\ntest -z \"$GIT_DIR\" && exit 1\nexec git diff-index --check --cached HEAD --\n";

// ---------------------------------------------------------------------------------------------
// The writer: creates entries, keeps statistics, fixes mtimes.

struct Gen {
    root: PathBuf,
    seed: u64,
    stats: CorpusStats,
    dirs: Vec<PathBuf>,
}

impl Gen {
    fn rng(&self, rel: &str) -> Rng {
        Rng::derive(self.seed, rel)
    }

    fn mtime(&self, rel: &str) -> SystemTime {
        let spread = fnv1a(rel.as_bytes()) % (30 * 86_400);
        SystemTime::UNIX_EPOCH + Duration::from_secs(MTIME_BASE + spread)
    }

    fn dir(&mut self, rel: &str) -> Result<()> {
        let path = self.root.join(rel);
        if !path.exists() {
            fs::create_dir_all(&path).with_context(|| format!("mkdir {}", path.display()))?;
        }
        Ok(())
    }

    fn empty_dir(&mut self, rel: &str) -> Result<()> {
        self.dir(rel)?;
        self.stats.empty_dirs += 1;
        Ok(())
    }

    fn file(&mut self, rel: &str, category: &str, exec: bool, content: &[u8]) -> Result<()> {
        let path = self.root.join(rel);
        if let Some(parent) = path.parent()
            && !parent.exists()
        {
            fs::create_dir_all(parent).with_context(|| format!("mkdir {}", parent.display()))?;
        }
        let mut f =
            fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
        f.write_all(content)?;
        if exec {
            f.set_permissions(fs::Permissions::from_mode(0o755))?;
            self.stats.executables += 1;
        }
        let t = self.mtime(rel);
        f.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))?;
        self.stats.files += 1;
        self.stats.bytes += content.len() as u64;
        let entry = self
            .stats
            .categories
            .entry(category.to_string())
            .or_default();
        entry.0 += 1;
        entry.1 += content.len() as u64;
        Ok(())
    }

    fn symlink(&mut self, rel: &str, target: &str) -> Result<()> {
        let path = self.root.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        std::os::unix::fs::symlink(target, &path)
            .with_context(|| format!("symlink {}", path.display()))?;
        set_symlink_mtime(&path, self.mtime(rel))?;
        self.stats.symlinks += 1;
        Ok(())
    }

    /// Directory mtimes last: creating entries inside a directory bumps its mtime.
    fn finish(mut self) -> Result<CorpusStats> {
        collect_dirs(&self.root, &mut self.dirs)?;
        for dir in &self.dirs {
            let rel = dir
                .strip_prefix(&self.root)
                .unwrap_or(dir)
                .to_string_lossy()
                .into_owned();
            let t = self.mtime(&rel);
            fs::File::open(dir)?.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))?;
        }
        self.stats.dirs = self.dirs.len() as u64;
        Ok(self.stats)
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            out.push(entry.path());
            collect_dirs(&entry.path(), out)?;
        }
    }
    Ok(())
}

fn set_symlink_mtime(path: &Path, t: SystemTime) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let secs = t.duration_since(SystemTime::UNIX_EPOCH)?.as_secs() as libc::time_t;
    let ts = [
        libc::timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
    ];
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: `c` is a valid NUL-terminated path and `ts` has the two entries utimensat reads.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("utimensat {}", path.display()));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Building blocks of a workspace.

/// How big the files of a dependency forest are.
#[derive(Clone, Copy)]
struct DepSizes {
    min: u64,
    max: u64,
}

const DEPS_NORMAL: DepSizes = DepSizes {
    min: 120,
    max: 16_000,
};
const DEPS_TINY: DepSizes = DepSizes {
    min: 30,
    max: 3_000,
};

fn package_name(rng: &mut Rng, i: u64) -> String {
    let a = rng.pick(WORDS);
    let b = rng.pick(WORDS);
    if rng.chance(15) {
        format!("@{a}/{b}-{i}")
    } else {
        format!("{a}-{b}-{i}")
    }
}

/// One npm-style package under `base` (a `node_modules` dir). Returns bytes written.
fn add_package(g: &mut Gen, base: &str, name: &str, sizes: DepSizes, nested: bool) -> Result<u64> {
    let dir = format!("{base}/{name}");
    let mut rng = g.rng(&dir);
    let before = g.stats.bytes;
    let cat = "dependencies";
    let deps: Vec<String> = (0..rng.below(6))
        .map(|_| {
            format!(
                "\"{}-{}\": \"^{}.{}.{}\"",
                rng.pick(WORDS),
                rng.pick(WORDS),
                rng.below(9),
                rng.below(30),
                rng.below(20)
            )
        })
        .collect();
    let pkg = format!(
        "{{\n  \"name\": \"{name}\",\n  \"version\": \"{}.{}.{}\",\n  \"description\": \"{} {} {}\",\n  \"main\": \"index.js\",\n  \"license\": \"MIT\",\n  \"dependencies\": {{\n    {}\n  }}\n}}\n",
        rng.below(9),
        rng.below(30),
        rng.below(20),
        rng.pick(WORDS),
        rng.pick(WORDS),
        rng.pick(WORDS),
        deps.join(",\n    ")
    );
    g.file(&format!("{dir}/package.json"), cat, false, pkg.as_bytes())?;
    let len = rng.log_size(sizes.min, sizes.max / 2) as usize;
    let readme = prose_text(&mut rng, len);
    g.file(&format!("{dir}/README.md"), cat, false, &readme)?;
    if rng.chance(70) {
        g.file(&format!("{dir}/LICENSE"), cat, false, MIT.as_bytes())?;
    }
    let len = rng.log_size(sizes.min, sizes.max) as usize;
    let index = code_text(&mut rng, Lang::Js, len);
    g.file(&format!("{dir}/index.js"), cat, false, &index)?;
    for j in 0..rng.range(0, 10) {
        let len = rng.log_size(sizes.min, sizes.max) as usize;
        let text = code_text(&mut rng, Lang::Js, len);
        g.file(
            &format!("{dir}/lib/{}-{j}.js", rng.pick(WORDS)),
            cat,
            false,
            &text,
        )?;
    }
    for j in 0..rng.range(0, 3) {
        let len = rng.log_size(sizes.min, sizes.max / 2) as usize;
        let text = code_text(&mut rng, Lang::Js, len);
        g.file(
            &format!("{dir}/types/{}-{j}.d.ts", rng.pick(WORDS)),
            cat,
            false,
            &text,
        )?;
    }
    if rng.chance(15) {
        let len = rng.log_size(sizes.max, sizes.max * 12) as usize;
        let text = minified_text(&mut rng, len);
        g.file(
            &format!("{dir}/dist/{}.min.js", name.replace('/', "-")),
            cat,
            false,
            &text,
        )?;
    }
    if rng.chance(10) {
        let len = rng.log_size(sizes.min, sizes.max / 4) as usize;
        let text = code_text(&mut rng, Lang::Js, len);
        g.file(&format!("{dir}/bin/cli.js"), cat, true, &text)?;
        let link = name.rsplit('/').next().unwrap_or(name);
        let up = if name.contains('/') { "../../" } else { "../" };
        g.symlink(
            &format!("{base}/.bin/{link}"),
            &format!("{up}{name}/bin/cli.js"),
        )?;
    }
    if rng.chance(5) {
        g.empty_dir(&format!("{dir}/test/fixtures/empty"))?;
    }
    if nested && rng.chance(10) {
        for k in 0..rng.range(1, 3) {
            let inner = package_name(&mut rng, k);
            add_package(g, &format!("{dir}/node_modules"), &inner, sizes, false)?;
        }
    }
    Ok(g.stats.bytes - before)
}

/// A `node_modules` forest of about `budget` bytes (or `min_files` files, whichever is larger).
fn add_forest(g: &mut Gen, base: &str, budget: u64, min_files: u64, sizes: DepSizes) -> Result<()> {
    let start_files = g.stats.files;
    let mut used = 0;
    let mut i = 0;
    while used < budget || g.stats.files - start_files < min_files {
        let name = package_name(&mut g.rng(&format!("{base}#{i}")), i);
        used += add_package(g, base, &name, sizes, true)?;
        i += 1;
    }
    Ok(())
}

/// A source tree of about `budget` bytes under `base`.
fn add_sources(g: &mut Gen, base: &str, lang: Lang, budget: u64) -> Result<()> {
    let mut rng = g.rng(base);
    let mut used = 0;
    let mut i = 0;
    let modules: Vec<String> = (0..rng.range(3, 8))
        .map(|_| rng.pick(WORDS).to_string())
        .collect();
    while used < budget {
        let module = rng.pick(&modules).clone();
        let sub = if rng.chance(50) {
            format!("/{}", rng.pick(WORDS))
        } else {
            String::new()
        };
        let len = rng.log_size(300, 40_000).min(budget - used + 300);
        let (rel, text) = match rng.below(20) {
            0 => (
                format!("{base}/docs/{}-{i}.md", rng.pick(WORDS)),
                prose_text(&mut rng, len as usize),
            ),
            1 => (
                format!(
                    "{base}/tests/{module}{sub}/{}_{i}.{}",
                    rng.pick(WORDS),
                    lang.ext()
                ),
                code_text(&mut rng, lang, len as usize),
            ),
            _ => (
                format!(
                    "{base}/src/{module}{sub}/{}_{i}.{}",
                    rng.pick(WORDS),
                    lang.ext()
                ),
                code_text(&mut rng, lang, len as usize),
            ),
        };
        g.file(&rel, "source", false, &text)?;
        used += len;
        i += 1;
    }
    for j in 0..rng.range(1, 4) {
        let len = rng.log_size(200, 4000) as usize;
        let text = code_text(&mut rng, Lang::Shell, len);
        g.file(
            &format!("{base}/scripts/{}-{j}.sh", rng.pick(WORDS)),
            "source",
            true,
            &text,
        )?;
    }
    g.file(
        &format!("{base}/.gitignore"),
        "source",
        false,
        b"/target\nnode_modules/\n*.log\n.env\n",
    )?;
    let ci = prose_text(&mut rng, 600);
    g.file(
        &format!("{base}/.github/workflows/ci.yml"),
        "source",
        false,
        &ci,
    )?;
    Ok(())
}

/// A `.git` directory whose objects take about `budget` bytes, nearly all in packs.
fn add_git(g: &mut Gen, base: &str, budget: u64) -> Result<()> {
    let git = format!("{base}/.git");
    let mut rng = g.rng(&git);
    let cat = "git";
    let mut commit = [0u8; 20];
    rng.fill(&mut commit);
    let head = hex::encode(commit);
    g.file(
        &format!("{git}/HEAD"),
        cat,
        false,
        b"ref: refs/heads/main\n",
    )?;
    g.file(&format!("{git}/config"), cat, false, b"[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n[remote \"origin\"]\n\turl = https://example.invalid/repo.git\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n")?;
    g.file(
        &format!("{git}/description"),
        cat,
        false,
        b"Unnamed repository; edit this file 'description' to name the repository.\n",
    )?;
    g.file(
        &format!("{git}/refs/heads/main"),
        cat,
        false,
        format!("{head}\n").as_bytes(),
    )?;
    g.file(
        &format!("{git}/packed-refs"),
        cat,
        false,
        format!("# pack-refs with: peeled fully-peeled sorted\n{head} refs/remotes/origin/main\n")
            .as_bytes(),
    )?;
    g.empty_dir(&format!("{git}/refs/tags"))?;
    g.empty_dir(&format!("{git}/objects/info"))?;
    for hook in [
        "pre-commit",
        "pre-push",
        "commit-msg",
        "pre-rebase",
        "update",
    ] {
        g.file(
            &format!("{git}/hooks/{hook}.sample"),
            cat,
            true,
            HOOK_SAMPLE.as_bytes(),
        )?;
    }
    let log = prose_text(&mut rng, 2_000);
    g.file(&format!("{git}/logs/HEAD"), cat, false, &log)?;
    let index = random_bytes(&mut rng, (budget / 200).clamp(512, 4_000_000) as usize);
    g.file(&format!("{git}/index"), cat, false, &index)?;
    // Packs are zlib-compressed objects: random bytes are the honest stand-in. One big pack
    // from the clone, one small one from later fetches.
    for size in [budget * 85 / 100, budget / 10] {
        let mut id = [0u8; 20];
        rng.fill(&mut id);
        let name = hex::encode(id);
        let pack = random_bytes(&mut rng, size.max(1) as usize);
        g.file(
            &format!("{git}/objects/pack/pack-{name}.pack"),
            cat,
            false,
            &pack,
        )?;
        let idx = random_bytes(&mut rng, (size / 40).max(64) as usize);
        g.file(
            &format!("{git}/objects/pack/pack-{name}.idx"),
            cat,
            false,
            &idx,
        )?;
    }
    for _ in 0..rng.range(5, 30) {
        let mut id = [0u8; 20];
        rng.fill(&mut id);
        let name = hex::encode(id);
        let len = rng.log_size(80, 4_000) as usize;
        let obj = random_bytes(&mut rng, len);
        g.file(
            &format!("{git}/objects/{}/{}", &name[..2], &name[2..]),
            cat,
            false,
            &obj,
        )?;
    }
    Ok(())
}

fn generate_workspace(g: &mut Gen, budget: u64) -> Result<()> {
    // One project per ~40 MB, so a larger workspace has more clones, not just bigger files.
    let projects = (budget / 40_000_000).clamp(1, 48);
    let langs = [Lang::Rust, Lang::Js, Lang::Python, Lang::Go];
    let per = budget / projects;
    let mut names = Vec::new();
    for p in 0..projects {
        let mut rng = g.rng(&format!("project#{p}"));
        let base = format!("proj-{p:02}-{}", rng.pick(WORDS));
        let lang = langs[(p % 4) as usize];
        let with_deps = p % 3 != 2;
        let (src, deps, git) = if with_deps { (28, 34, 22) } else { (45, 0, 30) };
        add_sources(g, &base, lang, per * src / 100)?;
        if with_deps {
            add_forest(
                g,
                &format!("{base}/node_modules"),
                per * deps / 100,
                0,
                DEPS_NORMAL,
            )?;
        }
        add_git(g, &base, per * git / 100)?;
        g.empty_dir(&format!("{base}/tmp"))?;
        g.empty_dir(&format!("{base}/.cache"))?;
        names.push(base);
    }
    // "A few large binaries": build outputs, a database, media.
    let binaries = (budget / 40_000_000).clamp(2, 12);
    let bin_budget = budget * 16 / 100;
    let mut rng = g.rng("binaries");
    for b in 0..binaries {
        let dir = &names[(b % projects) as usize];
        let size = bin_budget / binaries;
        let (rel, exec) = match b % 3 {
            0 => (
                format!("{dir}/target/release/{}-{b}", rng.pick(WORDS)),
                true,
            ),
            1 => (format!("{dir}/data/{}-{b}.sqlite", rng.pick(WORDS)), false),
            _ => (format!("{dir}/assets/{}-{b}.bin", rng.pick(WORDS)), false),
        };
        let bytes = binary_bytes(&mut g.rng(&rel), size as usize);
        g.file(&rel, "binaries", exec, &bytes)?;
    }
    // Top level: dotfiles (which upstream's `cp -r extracted/*` skips), a README, a dir symlink.
    g.file(
        ".editorconfig",
        "source",
        false,
        b"root = true\n\n[*]\nindent_style = space\nindent_size = 4\n",
    )?;
    g.file(
        ".vscode/settings.json",
        "source",
        false,
        b"{\n  \"editor.formatOnSave\": true\n}\n",
    )?;
    let readme = prose_text(&mut g.rng("README.md"), 3_000);
    g.file("README.md", "source", false, &readme)?;
    g.symlink("current", &names[0])?;
    Ok(())
}

fn generate_many_files(g: &mut Gen, budget: u64) -> Result<()> {
    // Average file ~0.7 kB, so ~1 file per kB of budget: 100k+ files at `small`.
    let files = (budget / 1_000).max(50);
    add_sources(g, "app", Lang::Js, budget / 50)?;
    add_forest(g, "app/node_modules", 0, files, DEPS_TINY)?;
    add_git(g, "app", budget / 50)?;
    g.file(".editorconfig", "source", false, b"root = true\n")?;
    Ok(())
}

/// Builds the corpus in `dir` (created; must not exist or be empty) with [`DEFAULT_SEED`].
pub fn generate(dir: &Path, profile: Profile, scale: &Scale) -> Result<CorpusStats> {
    generate_seeded(dir, profile, scale, DEFAULT_SEED)
}

pub fn generate_seeded(
    dir: &Path,
    profile: Profile,
    scale: &Scale,
    seed: u64,
) -> Result<CorpusStats> {
    fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
    if fs::read_dir(dir)?.next().is_some() {
        bail!("{} is not empty", dir.display());
    }
    let mut g = Gen {
        root: dir.to_path_buf(),
        seed,
        stats: CorpusStats::default(),
        dirs: Vec::new(),
    };
    match profile {
        Profile::Workspace => generate_workspace(&mut g, scale.bytes)?,
        Profile::ManyFiles => generate_many_files(&mut g, scale.bytes)?,
    }
    g.finish()
}

// ---------------------------------------------------------------------------------------------
// Mutations for incremental runs.

/// What a mutation changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Mutation {
    pub files: u64,
    pub bytes: u64,
}

/// Regular files under `dir`, sorted by relative path (the deterministic order mutations use).
fn regular_files(dir: &Path) -> Result<Vec<(PathBuf, u64)>> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, u64)>) -> Result<()> {
        let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let ft = e.file_type()?;
            if ft.is_dir() {
                walk(&e.path(), out)?;
            } else if ft.is_file() {
                out.push((e.path(), e.metadata()?.len()));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, &mut out)?;
    Ok(out)
}

fn looks_like_text(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .take(512)
        .all(|b| *b == b'\n' || *b == b'\t' || (32..127).contains(b))
}

/// Edits one source file the way a developer would: a line inserted in the middle.
pub fn touch_one_file(dir: &Path, seed: u64) -> Result<Mutation> {
    let candidates: Vec<_> = regular_files(dir)?
        .into_iter()
        .filter(|(p, _)| {
            let s = p.to_string_lossy();
            s.contains("/src/") && !s.contains("node_modules") && !s.contains("/.git/")
        })
        .collect();
    if candidates.is_empty() {
        bail!("no source file to edit under {}", dir.display());
    }
    let mut rng = Rng::new(seed ^ 0x7075_6368);
    let (path, _) = &candidates[rng.below(candidates.len() as u64) as usize];
    let mut content = fs::read(path)?;
    let mid = content
        .iter()
        .skip(content.len() / 2)
        .position(|b| *b == b'\n')
        .map_or(content.len(), |i| content.len() / 2 + i + 1);
    let line = format!("// edited by the incremental benchmark, seed {seed}\n");
    content.splice(mid..mid, line.bytes());
    fs::write(path, &content)?;
    Ok(Mutation {
        files: 1,
        bytes: content.len() as u64,
    })
}

/// Rewrites `ceil(fraction × files)` regular files, chosen by a seeded shuffle, with new
/// content of the same size and kind (text stays text-like, binary stays random).
pub fn change_fraction(dir: &Path, fraction: f64, seed: u64) -> Result<Mutation> {
    let mut files = regular_files(dir)?;
    let want = ((files.len() as f64) * fraction).ceil() as usize;
    let mut rng = Rng::new(seed ^ 0x6672_6163);
    for i in (1..files.len()).rev() {
        files.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut m = Mutation::default();
    for (path, len) in files.into_iter().take(want) {
        let old = fs::read(&path)?;
        let mut r = Rng::derive(seed, &path.to_string_lossy());
        let mut new = if looks_like_text(&old) {
            code_text(&mut r, Lang::Js, len as usize)
        } else {
            random_bytes(&mut r, len as usize)
        };
        if new == old {
            // Only possible for empty or one-byte files; a change must be a change.
            new.push(b'\n');
        }
        fs::write(&path, &new)?;
        m.files += 1;
        m.bytes += new.len() as u64;
    }
    Ok(m)
}

// ---------------------------------------------------------------------------------------------
// Tree hashing (generation tests and restore checks).

/// A content summary of a tree: paths, kinds, executable bits, file contents and symlink
/// targets (not mtimes or owners, which peers such as `cp -r` do not keep).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TreeSummary {
    pub hash: String,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
}

/// Per-file digests keyed by relative path (used to count what a mutation changed).
#[cfg(test)]
fn file_digests(dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (path, _) in regular_files(dir)? {
        let rel = path.strip_prefix(dir)?.to_string_lossy().into_owned();
        out.insert(rel, hex::encode(Sha256::digest(fs::read(&path)?)));
    }
    Ok(out)
}

pub fn tree_summary(dir: &Path) -> Result<TreeSummary> {
    fn walk(root: &Path, dir: &Path, h: &mut Sha256, s: &mut TreeSummary) -> Result<()> {
        let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let rel = path.strip_prefix(root)?.to_string_lossy().into_owned();
            let meta = fs::symlink_metadata(&path)?;
            let ft = meta.file_type();
            if ft.is_symlink() {
                s.symlinks += 1;
                h.update(format!(
                    "L {rel} -> {}\n",
                    fs::read_link(&path)?.to_string_lossy()
                ));
            } else if ft.is_dir() {
                s.dirs += 1;
                h.update(format!("D {rel}\n"));
                walk(root, &path, h, s)?;
            } else if ft.is_file() {
                s.files += 1;
                s.bytes += meta.len();
                let exec = meta.mode() & 0o111 != 0;
                let digest = hex::encode(Sha256::digest(fs::read(&path)?));
                h.update(format!("F {rel} {exec} {digest}\n"));
            } else {
                h.update(format!("O {rel}\n"));
            }
        }
        Ok(())
    }
    let mut h = Sha256::new();
    let mut s = TreeSummary {
        hash: String::new(),
        files: 0,
        dirs: 0,
        symlinks: 0,
        bytes: 0,
    };
    walk(dir, dir, &mut h, &mut s)?;
    s.hash = hex::encode(h.finalize());
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Scale {
        Scale::bytes("test", 1_500_000)
    }

    #[test]
    fn same_seed_same_tree_other_seed_other_tree() {
        let t = tempfile::tempdir().unwrap();
        let (a, b, c) = (t.path().join("a"), t.path().join("b"), t.path().join("c"));
        let sa = generate_seeded(&a, Profile::Workspace, &tiny(), 7).unwrap();
        let sb = generate_seeded(&b, Profile::Workspace, &tiny(), 7).unwrap();
        generate_seeded(&c, Profile::Workspace, &tiny(), 8).unwrap();
        assert_eq!(sa, sb);
        let (ha, hb, hc) = (
            tree_summary(&a).unwrap(),
            tree_summary(&b).unwrap(),
            tree_summary(&c).unwrap(),
        );
        assert_eq!(ha, hb);
        assert_ne!(ha.hash, hc.hash);
        assert_eq!(ha.files, sa.files);
        assert_eq!(ha.bytes, sa.bytes);
        // Same mtimes too, so archives of two fresh corpora are byte-identical.
        let m = |p: &Path| {
            fs::metadata(p.join("README.md"))
                .unwrap()
                .modified()
                .unwrap()
        };
        assert_eq!(m(&a), m(&b));
    }

    #[test]
    fn workspace_has_every_ingredient() {
        let t = tempfile::tempdir().unwrap();
        let s = generate(t.path(), Profile::Workspace, &tiny()).unwrap();
        for cat in ["source", "dependencies", "git", "binaries"] {
            assert!(
                s.categories.get(cat).is_some_and(|c| c.0 > 0 && c.1 > 0),
                "{cat}: {s:?}"
            );
        }
        assert!(
            s.symlinks > 0 && s.executables > 0 && s.empty_dirs > 0,
            "{s:?}"
        );
        assert!(t.path().join(".editorconfig").is_file());
        // Within 25% of the budget.
        assert!((1_100_000..1_900_000).contains(&s.bytes), "{}", s.bytes);
    }

    #[test]
    fn many_files_is_file_heavy() {
        let t = tempfile::tempdir().unwrap();
        let s = generate(t.path(), Profile::ManyFiles, &Scale::bytes("test", 400_000)).unwrap();
        assert!(s.files >= 400, "{s:?}");
        assert!(s.bytes / s.files < 2_000, "{s:?}");
    }

    #[test]
    fn mutations_change_the_expected_number_of_files() {
        let t = tempfile::tempdir().unwrap();
        generate(t.path(), Profile::Workspace, &tiny()).unwrap();
        let before = file_digests(t.path()).unwrap();

        touch_one_file(t.path(), 1).unwrap();
        let after_one = file_digests(t.path()).unwrap();
        let changed = before
            .iter()
            .filter(|(k, v)| after_one.get(*k) != Some(*v))
            .count();
        assert_eq!(changed, 1);

        let m = change_fraction(t.path(), 0.10, 1).unwrap();
        let after_frac = file_digests(t.path()).unwrap();
        let changed = after_one
            .iter()
            .filter(|(k, v)| after_frac.get(*k) != Some(*v))
            .count();
        let want = (before.len() as f64 * 0.10).ceil() as usize;
        assert_eq!(m.files as usize, want);
        assert_eq!(changed, want);
        assert_eq!(after_frac.len(), before.len());
    }

    #[test]
    fn scale_names() {
        assert_eq!("small".parse::<Scale>().unwrap().bytes, 100_000_000);
        assert_eq!("huge:8".parse::<Scale>().unwrap().bytes, 8_000_000_000);
        assert_eq!("250m".parse::<Scale>().unwrap().bytes, 250_000_000);
        assert!("medium".parse::<Scale>().is_err());
    }
}
