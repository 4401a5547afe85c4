//! The restore-safety corpus (issue 16 items 1–3): hostile archives and planted target state,
//! each class with several cases, run through the `wsr-restore` binary as the current user and,
//! when that is root, again as `nobody` (through setpriv). Every case checks that nothing
//! outside the target changed (the sentinel file's content included) and what the target holds.

mod common;

use common::archive::{Native, Tar, gzip, header, index_line, zstd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs the binary as one user.
#[derive(Clone, Copy, Debug)]
struct Runner {
    /// `Some(uid)`: through setpriv (the test runs as root); `None`: as the current user.
    uid: Option<u32>,
}

impl Runner {
    fn all() -> Vec<Runner> {
        let mut all = vec![Runner { uid: None }];
        if is_root() {
            all.push(Runner { uid: Some(NOBODY) });
        } else {
            eprintln!("not root: the corpus runs as the current (non-root) user only");
        }
        all
    }

    fn cmd(&self) -> Command {
        let mut c = match self.uid {
            Some(uid) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={uid}"))
                    .arg("--clear-groups")
                    .arg(env!("CARGO_BIN_EXE_wsr-restore"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_wsr-restore")),
        };
        c.env_remove("WSR_TEST_ABORT_AT").env("WSR_LOG", "warn");
        c
    }

    fn restore(&self, reference: &str, target: &Path, extra: &[&str]) -> Output {
        self.cmd()
            .args(["--progress", "never", "--json", "--from", reference, "--to"])
            .arg(target)
            .args(extra)
            .output()
            .unwrap()
    }

    fn verify(&self, reference: &str) -> Output {
        self.cmd()
            .args(["verify", reference, "--progress", "never"])
            .output()
            .unwrap()
    }

    /// Gives `path` (recursively; symlinks themselves) to the runner's user.
    fn own(&self, path: &Path) {
        if let Some(uid) = self.uid {
            chown(path, uid);
        }
    }

    /// The uid the binary runs as.
    fn id(&self) -> u32 {
        // SAFETY: geteuid has no preconditions.
        self.uid.unwrap_or_else(|| unsafe { libc::geteuid() })
    }
}

fn chown(path: &Path, uid: u32) {
    let ok = Command::new("chown")
        .arg("-hR")
        .arg(format!("{uid}:{uid}"))
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "chown {}", path.display());
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn report(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "restore failed: {}", stderr(o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

/// A temporary directory with a sentinel file and directory next to the target.
struct Jail {
    dir: tempfile::TempDir,
}

impl Jail {
    fn new() -> Jail {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::write(dir.path().join("sentinel"), b"outside").unwrap();
        std::fs::create_dir(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("outside/kept"), b"kept").unwrap();
        Jail { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn target(&self) -> PathBuf {
        self.path().join("target")
    }
    fn layout(&self, name: &str) -> PathBuf {
        self.path().join(format!("layout-{name}"))
    }
    /// Everything in the jail except the target and its `.wsr-aside-*` siblings, with the
    /// contents of files and symlinks.
    fn outside(&self) -> Vec<String> {
        let target = self.target();
        let mut out = Vec::new();
        walk(self.path(), &mut |p| {
            let name = p.to_string_lossy();
            if p == target || name.starts_with(&format!("{}.wsr-aside-", target.display())) {
                return false;
            }
            out.push(describe(self.path(), p));
            true
        });
        out.sort();
        out
    }
    /// Asserts nothing outside the target changed since `before`.
    fn assert_outside(&self, before: &[String], case: &str) {
        assert_eq!(
            self.outside(),
            before,
            "{case}: something outside the target changed"
        );
    }
}

/// Calls `visit` for every path below `dir` (not following symlinks); descends into directories
/// for which it returns true.
fn walk(dir: &Path, visit: &mut dyn FnMut(&Path) -> bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if visit(&p) && e.file_type().unwrap().is_dir() {
            walk(&p, visit);
        }
    }
}

fn describe(root: &Path, p: &Path) -> String {
    let meta = std::fs::symlink_metadata(p).unwrap();
    let what = if meta.file_type().is_symlink() {
        format!("-> {}", std::fs::read_link(p).unwrap().display())
    } else if meta.is_file() {
        format!(
            "= {:?}",
            String::from_utf8_lossy(&std::fs::read(p).unwrap())
        )
    } else {
        format!("dir {:o}", meta.mode() & 0o7777)
    };
    format!("{} {what}", p.strip_prefix(root).unwrap().display())
}

/// Top-level names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn publish_tar(jail: &Jail, name: &str, tar: Vec<u8>) -> String {
    readable(common::publish_blob(&jail.layout(name), gzip(&tar)))
}

/// Layout files are written private (0600); the other runner must read them.
fn readable(reference: String) -> String {
    let dir = reference
        .strip_prefix("oci:")
        .and_then(|r| r.strip_suffix(":latest"))
        .unwrap();
    let ok = Command::new("chmod")
        .args(["-R", "a+rX", dir])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    reference
}

fn benign(jail: &Jail, name: &str) -> String {
    publish_tar(jail, name, Tar::default().file("fresh.txt", b"new\n").end())
}

fn token() -> String {
    "0123456789abcdef0123456789abcdef".into()
}

// ---------------------------------------------------------------------------------------------
// Item 1: the restore's own bookkeeping is out of the archive's reach.

/// An archive that carries a whole forged staging directory (new and old naming) at its top.
fn reserved_names_in_the_archive(run: Runner) {
    let jail = Jail::new();
    let staging = format!(".wsr-restore-{}", token());
    let forged = serde_json::json!({"token": token(), "dev": 1, "ino": 1, "uid": run.id()});
    let tar = Tar::default()
        .dir(&format!("{staging}/"), 0o700)
        .file(
            &format!("{staging}/identity"),
            forged.to_string().as_bytes(),
        )
        .file(&format!("{staging}/complete"), b"{\"forged\":true}")
        .file(&format!("{staging}/tree/evil.txt"), b"evil")
        .file(".wsr-restore-other/x", b"x")
        .dir(".wsr-staging-1/", 0o755)
        .file(".wsr-staging-1/.wsr-complete", b"{}")
        .file(".wsr-staging-1/evil.txt", b"old-style")
        .file("ok.txt", b"ok")
        .end();
    let reference = publish_tar(&jail, "a", tar);
    let fresh = benign(&jail, "b");
    let before = jail.outside();
    let out = run.restore(&reference, &jail.target(), &[]);
    let r = report(&out);
    jail.assert_outside(&before, "reserved names");
    assert_eq!(
        names(&jail.target()),
        [".wsr-staging-1", "ok.txt"],
        "reserved top-level names are never created"
    );
    let skipped = r["skipped"].to_string();
    assert!(
        skipped.contains(&staging) && skipped.contains(".wsr-restore-other"),
        "{skipped}"
    );
    // A later forced restore trusts none of it: the old-style staging directory is user
    // content, moved aside with the rest, never deleted.
    let r = report(&run.restore(&fresh, &jail.target(), &["--force"]));
    assert_eq!(r["resumed"], false);
    assert_eq!(names(&jail.target()), ["fresh.txt"]);
    let aside = PathBuf::from(r["moved_aside"].as_str().unwrap());
    assert_eq!(
        std::fs::read(aside.join(".wsr-staging-1/evil.txt")).unwrap(),
        b"old-style"
    );
    jail.assert_outside(&before, "reserved names, forced");
}

/// Entries named like the bookkeeping files, some of them symlinks to outside, some of them
/// directories: restored as plain data; nothing is written through them; later runs work.
fn names_like_the_markers(run: Runner) {
    let jail = Jail::new();
    let sentinel = jail.path().join("sentinel");
    let outside = jail.path().join("outside");
    let (s, o) = (sentinel.to_str().unwrap(), outside.to_str().unwrap());
    let tar = Tar::default()
        .symlink("complete", s)
        .symlink("identity", s)
        .symlink(".wsr-complete", s)
        .symlink("tree", o)
        .dir("state/", 0o755)
        .dir("complete.d/", 0o755)
        .end();
    let reference = publish_tar(&jail, "a", tar);
    let before = jail.outside();
    report(&run.restore(&reference, &jail.target(), &[]));
    jail.assert_outside(&before, "marker-named symlinks");
    assert_eq!(
        std::fs::read_link(jail.target().join("complete")).unwrap(),
        sentinel
    );
    // A second restore of the same archive over it, and a crash right after the marker with a
    // rerun: never wedged, never written through.
    report(&run.restore(&reference, &jail.target(), &["--force"]));
    let crashed = run
        .cmd()
        .env("WSR_TEST_ABORT_AT", "after-marker")
        .args([
            "--progress",
            "never",
            "--force",
            "--from",
            &reference,
            "--to",
        ])
        .arg(jail.target())
        .output()
        .unwrap();
    assert!(!crashed.status.success());
    let rerun = report(&run.restore(&reference, &jail.target(), &[]));
    assert_eq!(
        rerun["resumed"], true,
        "the rerun completes the crashed restore"
    );
    assert_eq!(
        names(&jail.target()),
        [
            ".wsr-complete",
            "complete",
            "complete.d",
            "identity",
            "state",
            "tree"
        ]
    );
    jail.assert_outside(&before, "marker-named symlinks after the crash");
}

/// Writes a staging-looking directory into `target`, owned by `owner`, whose identity file
/// records `ino` (`None`: its real inode) and whose marker carries a forged report.
fn plant_staging(target: &Path, owner: u32, ino: Option<u64>, run: Runner) -> PathBuf {
    std::fs::create_dir_all(target).unwrap();
    let dir = target.join(format!(".wsr-restore-{}", token()));
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let meta = std::fs::metadata(&dir).unwrap();
    let identity = serde_json::json!({
        "token": token(), "dev": meta.dev(), "ino": ino.unwrap_or(meta.ino()), "uid": owner,
    });
    std::fs::write(dir.join("identity"), identity.to_string()).unwrap();
    let forged = serde_json::json!({"token": token(), "deferred_dirs": [], "report": {
        "reference": "forged", "digest": "forged", "format": "native", "target": null,
        "files": 1, "dirs": 0, "symlinks": 0, "hardlinks": 0, "bytes": 1,
        "downloaded_bytes": 0, "layers": 1, "verified_index": true, "skipped": [],
        "moved_aside": null, "duration_s": 0.0 }});
    std::fs::write(dir.join("complete"), forged.to_string()).unwrap();
    std::fs::create_dir(dir.join("tree")).unwrap();
    std::fs::write(dir.join("tree/evil.txt"), b"evil").unwrap();
    chown(target, run.id());
    chown(&dir, owner);
    dir
}

/// Planted "completed staging" directories that fail the identity check (copied: wrong inode;
/// someone else's) are the user's content: not resumed, not trusted by `init`, moved aside
/// (never deleted) by `--force`.
fn planted_staging_is_not_trusted(run: Runner) {
    let other = if run.id() == 0 { 1234 } else { 0 };
    let cases = [
        ("wrong inode", run.id(), Some(1)),
        ("other owner", other, None),
    ];
    for (case, owner, ino) in cases {
        let jail = Jail::new();
        let reference = benign(&jail, "a");
        let planted = plant_staging(&jail.target(), owner, ino, run);
        let before = jail.outside();
        let listing = |p: &Path| {
            let mut v = Vec::new();
            walk(p, &mut |q| {
                v.push(describe(p, q));
                true
            });
            v.sort();
            v
        };
        let planted_state = listing(&jail.target());
        let refused = run.restore(&reference, &jail.target(), &[]);
        assert_eq!(
            refused.status.code(),
            Some(3),
            "{case}: {}",
            stderr(&refused)
        );
        assert_eq!(listing(&jail.target()), planted_state, "{case}");
        let init = run
            .cmd()
            .arg("init")
            .env("BACKUP_IMAGE", &reference)
            .env("PROJECTS_ROOT", jail.target())
            .output()
            .unwrap();
        assert!(init.status.success(), "{case}: {}", stderr(&init));
        assert!(String::from_utf8_lossy(&init.stdout).contains("not empty"));
        assert_eq!(listing(&jail.target()), planted_state, "{case}: init");
        let forced = run.restore(&reference, &jail.target(), &["--force"]);
        if run.id() != 0 && owner != run.id() {
            // A non-root user cannot move another user's private directory: refused before
            // anything moves.
            assert_eq!(forced.status.code(), Some(3), "{case}: {}", stderr(&forced));
            assert_eq!(listing(&jail.target()), planted_state, "{case}: forced");
            jail.assert_outside(&before, case);
            continue;
        }
        let forced = report(&forced);
        assert_eq!(forced["resumed"], false, "{case}");
        assert_ne!(forced["reference"], "forged", "{case}");
        assert_eq!(names(&jail.target()), ["fresh.txt"], "{case}");
        let aside = PathBuf::from(forced["moved_aside"].as_str().unwrap());
        let moved = aside.join(planted.file_name().unwrap());
        assert_eq!(std::fs::read(moved.join("tree/evil.txt")).unwrap(), b"evil");
        jail.assert_outside(&before, case);
    }
}

/// A staging-named symlink to a directory outside the target, holding a valid-looking
/// completed staging: never followed, never moved from.
fn planted_symlink_staging(run: Runner) {
    let jail = Jail::new();
    let reference = benign(&jail, "a");
    let fake = jail.path().join("outside/fake");
    std::fs::create_dir(&fake).unwrap();
    let real = plant_staging(&fake, run.id(), None, run);
    std::fs::create_dir(jail.target()).unwrap();
    std::os::unix::fs::symlink(&real, jail.target().join(real.file_name().unwrap())).unwrap();
    run.own(&jail.target());
    run.own(&jail.path().join("outside"));
    let before = jail.outside();
    let refused = run.restore(&reference, &jail.target(), &[]);
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    let forced = report(&run.restore(&reference, &jail.target(), &["--force"]));
    assert_eq!(forced["resumed"], false);
    assert_eq!(names(&jail.target()), ["fresh.txt"]);
    jail.assert_outside(&before, "symlinked staging");
}

// ---------------------------------------------------------------------------------------------
// Item 2: bounded, whatever the input declares.

/// GNU sparse entries whose declared size is near 2^64, or whose sizes add up beyond it, or
/// beyond --max-size: refused before anything is written; `verify` ends.
fn sparse_sizes_are_bounded(run: Runner) {
    /// Name, archive, extra arguments, exit code, message.
    type Case = (
        &'static str,
        Vec<u8>,
        &'static [&'static str],
        i32,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "near 2^64 after a file",
            Tar::default()
                .file("a", &[1u8; 1024])
                .sparse("huge", u64::MAX - 511, u64::MAX - 1023, &[7u8; 512])
                .end(),
            &[],
            6,
            "add up beyond 2^64",
        ),
        (
            "2^63 twice",
            Tar::default()
                .sparse("h1", 1 << 63, (1 << 63) - 512, &[7u8; 512])
                .sparse("h2", 1 << 63, (1 << 63) - 512, &[7u8; 512])
                .end(),
            &[],
            3,
            "expands beyond the limit",
        ),
        (
            "1 GiB against --max-size 1 MiB",
            Tar::default().sparse("g", 1 << 30, 4096, &[7u8; 512]).end(),
            &["--max-size", "1048576"],
            3,
            "expands beyond the limit",
        ),
    ];
    for (case, tar, extra, code, want) in cases {
        let jail = Jail::new();
        let reference = publish_tar(&jail, "a", tar);
        let before = jail.outside();
        let out = run.restore(&reference, &jail.target(), extra);
        assert_eq!(out.status.code(), Some(code), "{case}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{case}: {}", stderr(&out));
        assert!(
            names(&jail.target()).is_empty(),
            "{case}: target left with content"
        );
        jail.assert_outside(&before, case);
        // Verify reads no holes (a tarball has no digests to check them against): it ends,
        // refusing only sizes that overflow.
        let verify = run.verify(&reference);
        let want = if case == "1 GiB against --max-size 1 MiB" {
            0
        } else {
            6
        };
        assert_eq!(
            verify.status.code(),
            Some(want),
            "{case}: {}",
            stderr(&verify)
        );
    }
}

/// A sparse file is restored with its holes: the size it declares, the data at its offset,
/// and only a few blocks allocated.
fn sparse_files_become_holes(run: Runner) {
    let jail = Jail::new();
    let real = 256u64 << 20;
    let tar = Tar::default()
        .sparse("disk.img", real, 128 << 20, &[b'x'; 4096])
        .file("zeros", &vec![0u8; 4 << 20])
        .end();
    let reference = publish_tar(&jail, "a", tar);
    report(&run.restore(&reference, &jail.target(), &[]));
    let img = jail.target().join("disk.img");
    let meta = std::fs::metadata(&img).unwrap();
    assert_eq!(meta.len(), real);
    assert!(meta.blocks() * 512 <= 1 << 20, "{} blocks", meta.blocks());
    use std::io::{Read, Seek};
    let mut f = std::fs::File::open(&img).unwrap();
    let mut buf = [0u8; 8192];
    f.seek(std::io::SeekFrom::Start((128 << 20) - 4096))
        .unwrap();
    f.read_exact(&mut buf).unwrap();
    assert!(buf[..4096].iter().all(|&b| b == 0) && buf[4096..].iter().all(|&b| b == b'x'));
    let zeros = std::fs::metadata(jail.target().join("zeros")).unwrap();
    assert_eq!(zeros.len(), 4 << 20);
    assert!(zeros.blocks() * 512 < 1 << 20, "zeros written as data");
    let over = run.restore(
        &reference,
        &jail.path().join("t2"),
        &["--max-size", &(real - 1).to_string()],
    );
    assert_eq!(over.status.code(), Some(3), "{}", stderr(&over));
}

/// Streams a zstd tarball whose first member is a `kind` record of `len` bytes, without
/// holding it in memory.
fn big_record(jail: &Jail, name: &str, kind: u8, len: u64) -> String {
    use std::io::Write;
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    let mut h = header(kind, b"././@LongLink", b"", len, 0o644);
    h.set_cksum();
    enc.write_all(h.as_bytes()).unwrap();
    let chunk = match kind {
        b'x' | b'g' => {
            let mut c = b"a/".repeat(512 << 10);
            c.truncate(1 << 20);
            c
        }
        _ => vec![b'a'; 1 << 20],
    };
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        enc.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    enc.write_all(&vec![0u8; (len.div_ceil(512) * 512 - len) as usize])
        .unwrap();
    enc.write_all(&Tar::default().file("after", b"x").end())
        .unwrap();
    readable(common::publish_blob(
        &jail.layout(name),
        enc.finish().unwrap(),
    ))
}

/// `n` empty files, each named by a GNU long-name record of about 3,000 bytes.
fn many_long_names(jail: &Jail, n: usize) -> String {
    use std::io::Write;
    let stem = vec!["d".repeat(250); 12].join("/");
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    for i in 0..n {
        let mut name = format!("{stem}/f{i:08}").into_bytes();
        name.push(0);
        let tar = Tar::default()
            .record(b'L', &name)
            .raw(header(b'0', b"placeholder", b"", 0, 0o644), b"");
        enc.write_all(&tar.bytes).unwrap();
    }
    enc.write_all(&[0u8; 1024]).unwrap();
    readable(common::publish_blob(
        &jail.layout("many"),
        enc.finish().unwrap(),
    ))
}

/// GNU long-name/long-link records and PAX headers (local and global) far beyond the limit,
/// sparse maps too long, names too long: refused while reading, with short messages, in
/// bounded memory.
fn metadata_is_bounded(run: Runner) {
    let jail = Jail::new();
    for kind in [b'L', b'K', b'x', b'g'] {
        let reference = big_record(&jail, &format!("big-{kind}"), kind, 48 << 20);
        let out = run.restore(&reference, &jail.target(), &[]);
        let case = format!("48 MiB {} record", kind as char);
        assert_eq!(out.status.code(), Some(6), "{case}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("exceed 1048576 bytes"),
            "{case}: {}",
            stderr(&out)
        );
        assert!(names(&jail.target()).is_empty(), "{case}");
        let verify = run.verify(&reference);
        assert_eq!(verify.status.code(), Some(6), "{case}: verify");
    }
    // A long name within the metadata limit but beyond PATH_MAX: refused, and the message
    // shows a bounded prefix of it.
    let long = "a".repeat(200_000);
    let mut record = long.clone().into_bytes();
    record.push(0);
    let tar = Tar::default()
        .record(b'L', &record)
        .file("placeholder", b"x")
        .end();
    let reference = publish_tar(&jail, "long", tar);
    let out = run.restore(&reference, &jail.target(), &[]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("(200000 bytes)"), "{}", stderr(&out));
    assert!(stderr(&out).len() < 2048, "message repeats the name");
    // A sparse map longer than the limit (extension blocks after the header).
    let mut h = header(b'S', b"map", b"", 0, 0o644);
    let gnu = h.as_gnu_mut().unwrap();
    gnu.set_real_size(1 << 40);
    gnu.set_is_extended(true);
    h.set_cksum();
    let mut tar = h.as_bytes().to_vec();
    let mut ext = tar::GnuExtSparseHeader::new();
    ext.isextended[0] = 1;
    for _ in 0..4096 {
        tar.extend_from_slice(ext.as_bytes());
    }
    let reference = publish_tar(&jail, "map", Tar { bytes: tar }.end());
    let out = run.restore(&reference, &jail.target(), &[]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("exceed"), "{}", stderr(&out));
    // Many entries with long names: the model keeps a fixed-size key per entry, not the
    // name (20,000 × 3,000-byte names would otherwise be 60 MB of names).
    let reference = many_long_names(&jail, 20_000);
    let verify = run.verify(&reference);
    assert!(verify.status.success(), "{}", stderr(&verify));
    assert!(String::from_utf8_lossy(&verify.stdout).contains("20000 files"));
    // PAX names that are fine still work.
    let deep = ["p".repeat(100), "q".repeat(100), "r".repeat(100)].join("/");
    let body = format!(" path=d/{deep}\n");
    let pax = format!("{}{body}", body.len() + 3);
    let tar = Tar::default()
        .record(b'x', pax.as_bytes())
        .file("short", b"pax")
        .end();
    let reference = publish_tar(&jail, "pax", tar);
    report(&run.restore(&reference, &jail.target(), &[]));
    assert_eq!(
        std::fs::read(jail.target().join("d").join(&deep)).unwrap(),
        b"pax"
    );
}

/// Data after the end-of-archive marker: a tarball's is never decompressed (here it is not
/// even valid gzip), a native layer's is limited to 1 MiB.
fn data_after_end_of_archive(run: Runner) {
    let jail = Jail::new();
    let mut blob = gzip(&Tar::default().file("f", b"data").end());
    blob.extend_from_slice(&[0x55; 100_000]);
    let reference = readable(common::publish_blob(&jail.layout("tail"), blob));
    report(&run.restore(&reference, &jail.target(), &[]));
    assert_eq!(names(&jail.target()), ["f"]);

    let mut tar = Tar::default().file("f", b"data").end();
    tar.resize(tar.len() + (2 << 20), 0);
    let line = index_line("file", "f", 0o644, b"data", None);
    let reference = Native::new(tar, &[line], 1, 0, 4).publish(&jail.layout("native"));
    let reference = readable(reference);
    let out = run.restore(&reference, &jail.path().join("t2"), &[]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("follow the end-of-archive marker"));
}

/// Native documents: honest artifact restores; lying counts, sizes and overlong lines are
/// refused before or while reading, never trusted as allocation sizes.
fn native_documents_are_bounded(run: Runner) {
    let jail = Jail::new();
    let tar = Tar::default().dir("d/", 0o755).file("d/f", b"data").end();
    let lines = vec![
        index_line("dir", "d", 0o755, b"", None),
        index_line("file", "d/f", 0o644, b"data", None),
    ];
    let honest = || Native::new(tar.clone(), &lines, 1, 1, 4);
    let reference = readable(honest().publish(&jail.layout("honest")));
    report(&run.restore(&reference, &jail.target(), &[]));
    assert_eq!(std::fs::read(jail.target().join("d/f")).unwrap(), b"data");

    type Tamper = Box<dyn Fn(&mut Native)>;
    let cases: Vec<(&str, Tamper, &str)> = vec![
        (
            "more index lines than declared",
            Box::new(|n| {
                n.config["layers"][0]["entries"] = 1.into();
                n.config["totals"]["dirs"] = 0.into();
            }),
            "more than the 1 entries",
        ),
        (
            "a counter of 2^64-1",
            Box::new(|n| n.config["totals"]["files"] = u64::MAX.into()),
            "beyond 2^64",
        ),
        (
            "2^62 entries declared",
            Box::new(|n| {
                n.config["layers"][0]["entries"] = (1u64 << 62).into();
                n.config["totals"]["files"] = ((1u64 << 62) - 1).into();
            }),
            "at most 2097152",
        ),
        (
            "counts that disagree",
            Box::new(|n| n.config["totals"]["files"] = 7.into()),
            "totals say",
        ),
        (
            "config descriptor size",
            Box::new(|n| n.config_size_lie = 10),
            "its descriptor says",
        ),
        (
            "bytes that disagree",
            Box::new(|n| n.config["totals"]["bytes"] = 5.into()),
            "holds 4 bytes of files",
        ),
        (
            "an index line beyond 64 KiB",
            Box::new(|n| {
                let long = format!("{{\"path\":\"{}\"}}\n", "x".repeat(70_000));
                n.index = zstd(long.as_bytes());
            }),
            "longer than 65536 bytes",
        ),
        (
            "index lines in another order than the layer's",
            Box::new(|n| {
                let swapped = [
                    index_line("file", "d/f", 0o644, b"data", None),
                    index_line("dir", "d", 0o755, b"", None),
                ];
                n.index = index_blob(&swapped);
            }),
            "entry is not in the file index at this point",
        ),
        (
            "an entry the index does not list",
            Box::new(|n| {
                n.index = index_blob(&[index_line("dir", "d", 0o755, b"", None)]);
                n.config["layers"][0]["entries"] = 1.into();
                n.config["totals"]["files"] = 0.into();
                n.config["totals"]["bytes"] = 0.into();
            }),
            "the layer's index has no more lines",
        ),
        (
            "an index line the layer lacks",
            Box::new(|n| {
                n.index = index_blob(&[
                    index_line("dir", "d", 0o755, b"", None),
                    index_line("file", "d/f", 0o644, b"data", None),
                    index_line("file", "d/g", 0o644, b"more", None),
                ]);
                n.config["layers"][0]["entries"] = 3.into();
                n.config["totals"]["files"] = 2.into();
                n.config["totals"]["bytes"] = 8.into();
            }),
            "listed in the file index but missing from the archive",
        ),
        (
            "a directory listed twice",
            Box::new(|n| {
                n.tar = Tar::default()
                    .dir("d/", 0o755)
                    .file("d/f", b"data")
                    .dir("d/", 0o755)
                    .end();
                n.index = index_blob(&[
                    index_line("dir", "d", 0o755, b"", None),
                    index_line("file", "d/f", 0o644, b"data", None),
                    index_line("dir", "d", 0o755, b"", None),
                ]);
                n.config["layers"][0]["entries"] = 3.into();
                n.config["totals"]["dirs"] = 2.into();
                n.config["layers"][0]["diff_id"] =
                    wsr_format::digest::Digest::of(&n.tar).to_string().into();
                n.config["layers"][0]["tar_size"] = n.tar.len().into();
            }),
            "lists this directory twice",
        ),
        // The uncompressed stream is counted, not hashed, against the config (the entries'
        // contents are hashed against the index): its length must match either way.
        (
            "a stream longer than its tar_size",
            Box::new(|n| n.config["layers"][0]["tar_size"] = (n.tar.len() - 1).into()),
            "the uncompressed stream is more than 2559 bytes",
        ),
        (
            "a stream shorter than its tar_size",
            Box::new(|n| n.config["layers"][0]["tar_size"] = (n.tar.len() + 512).into()),
            "the uncompressed stream is 2560 bytes, the config says 3072",
        ),
        (
            "a sparse entry in a native layer",
            Box::new(|n| {
                n.tar = Tar::default()
                    .dir("d/", 0o755)
                    .sparse("d/f", 4, 0, b"data")
                    .end();
                n.config["layers"][0]["diff_id"] =
                    wsr_format::digest::Digest::of(&n.tar).to_string().into();
                n.config["layers"][0]["tar_size"] = n.tar.len().into();
            }),
            "GNU sparse entries are not part of the native format",
        ),
    ];
    // Version 3 keeps each index at the end of its layer's blob, read by range: the same
    // checks hold, and the frame itself is checked.
    let v3_cases: Vec<(&str, Tamper, &str)> = vec![
        (
            "a frame with another magic number",
            Box::new(|n| n.in_layer.as_mut().unwrap().magic = 0x184D2A50),
            "not the magic number 0x184d2a57",
        ),
        (
            "a frame declaring another length",
            Box::new(|n| n.in_layer.as_mut().unwrap().length_lie = -1),
            "the rest of the blob is",
        ),
        (
            "an index_at inside the compressed tar",
            Box::new(|n| n.in_layer.as_mut().unwrap().index_at_lie = -3),
            "digest mismatch",
        ),
        (
            "an index_at beyond the blob",
            Box::new(|n| n.in_layer.as_mut().unwrap().index_at_lie = 1000),
            "config and manifest list different layers",
        ),
        (
            "index bytes other than the config's index",
            Box::new(|n| {
                let one = index_blob(&[index_line("dir", "d", 0o755, b"", None)]);
                n.in_layer.as_mut().unwrap().payload = Some(one);
            }),
            "digest mismatch",
        ),
    ];
    let reference = readable(honest().v3().publish(&jail.layout("honest-v3")));
    report(&run.restore(&reference, &jail.path().join("t-honest-v3"), &[]));
    assert_eq!(
        std::fs::read(jail.path().join("t-honest-v3/d/f")).unwrap(),
        b"data"
    );
    // Every case in both versions, then the version 3 ones.
    let runs = cases
        .iter()
        .flat_map(|case| [(case, false), (case, true)])
        .chain(v3_cases.iter().map(|case| (case, true)));
    for ((case, tamper, want), in_layer) in runs {
        let mut native = if in_layer { honest().v3() } else { honest() };
        tamper(&mut native);
        let name = format!(
            "{}{}",
            if in_layer { "v3-" } else { "" },
            case.replace(' ', "-")
        );
        let reference = readable(native.publish(&jail.layout(&name)));
        let target = jail.path().join("t-native");
        let out = run.restore(&reference, &target, &[]);
        assert_eq!(out.status.code(), Some(6), "{name}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{name}: {}", stderr(&out));
        assert!(names(&target).is_empty(), "{name}");
        let verify = run.verify(&reference);
        assert_eq!(verify.status.code(), Some(6), "{name}: verify");
        assert!(
            stderr(&verify).contains(want),
            "{name}: {}",
            stderr(&verify)
        );
    }

    // An index blob whose bytes differ from its digest is reported as such, even though its
    // lines are read beside the layer before the whole blob has been hashed.
    let layout = jail.layout("tampered-index");
    let reference = readable(honest().publish(&layout));
    let honest_index = honest().index;
    let stored = walk_blobs(&layout)
        .into_iter()
        .find(|p| std::fs::read(p).unwrap() == honest_index)
        .expect("the index blob");
    // One line instead of two, padded to the same size with a zstd skippable frame.
    let mut index = index_blob(&lines[..1]);
    let pad = honest_index.len() - index.len() - 8;
    index.extend_from_slice(&0x184D2A50u32.to_le_bytes());
    index.extend_from_slice(&(pad as u32).to_le_bytes());
    index.resize(honest_index.len(), 0);
    std::fs::write(&stored, &index).unwrap();
    let target = jail.path().join("t-tampered");
    for out in [
        run.restore(&reference, &target, &[]),
        run.verify(&reference),
    ] {
        assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
        assert!(stderr(&out).contains("digest"), "{}", stderr(&out));
        assert!(!stderr(&out).contains("no more lines"), "{}", stderr(&out));
    }
    assert!(names(&target).is_empty());
}

/// A file whose index line carries another content digest (same size; every blob honest).
/// `wsr-restore verify`, which writes nothing, measures content by the index and refuses it; a
/// restore writes the layer's bytes, which the verified blob digest vouches for (FORMAT.md §6
/// rule 5), so the index does not make it hash every file a second time.
fn content_digest_is_checked_where_nothing_else_vouches(run: Runner) {
    let jail = Jail::new();
    let tar = Tar::default().dir("d/", 0o755).file("d/f", b"data").end();
    let mut lying: serde_json::Value =
        serde_json::from_str(&index_line("file", "d/f", 0o644, b"data", None)).unwrap();
    lying["sha256"] = wsr_format::digest::Digest::of(b"DATA").to_string().into();
    let lines = [index_line("dir", "d", 0o755, b"", None), lying.to_string()];
    for (name, native) in [
        ("v1", Native::new(tar.clone(), &lines, 1, 1, 4)),
        ("v3", Native::new(tar.clone(), &lines, 1, 1, 4).v3()),
    ] {
        let reference = readable(native.publish(&jail.layout(name)));
        let verify = run.verify(&reference);
        assert_eq!(verify.status.code(), Some(6), "{name}: {}", stderr(&verify));
        assert!(
            stderr(&verify).contains("content digest"),
            "{name}: {}",
            stderr(&verify)
        );
        let target = jail.path().join(format!("t-{name}"));
        report(&run.restore(&reference, &target, &[]));
        assert_eq!(
            std::fs::read(target.join("d/f")).unwrap(),
            b"data",
            "{name}"
        );
    }
}

/// A file index blob as a backup writes it: JSON lines, zstd-compressed.
fn index_blob(lines: &[String]) -> Vec<u8> {
    zstd(format!("{}\n", lines.join("\n")).as_bytes())
}

/// The blob files of an OCI layout.
fn walk_blobs(layout: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

/// Files of an OCI layout are opened only if regular and read only up to their limit: a FIFO
/// or `/dev/zero` in place of a blob, a manifest or `index.json` fails (without hanging), and
/// so do a 5 MiB `index.json` and a 5 MiB manifest.
fn layout_files_are_regular_and_bounded(run: Runner) {
    let jail = Jail::new();
    let reference = publish_tar(&jail, "a", Tar::default().file("f", b"data").end());
    let layout = jail.layout("a");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest_hex = index["manifests"][0]["digest"].as_str().unwrap()[7..].to_owned();
    let manifest_path = layout.join("blobs/sha256").join(&manifest_hex);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    let layer_hex = manifest["layers"][0]["digest"].as_str().unwrap()[7..].to_owned();
    let layer_path = layout.join("blobs/sha256").join(&layer_hex);
    let fifo = |p: &Path| {
        let ok = Command::new("mkfifo").arg(p).status().unwrap().success();
        assert!(ok);
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
    };
    let zero = |p: &Path| std::os::unix::fs::symlink("/dev/zero", p).unwrap();
    let big = |p: &Path| {
        let pad = "a".repeat(5 << 20);
        let doc = format!(r#"{{"schemaVersion":2,"manifests":[],"pad":"{pad}"}}"#);
        std::fs::write(p, doc).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
    };
    type Plant<'a> = (&'a str, &'a Path, &'a dyn Fn(&Path), &'a str);
    let cases: [Plant; 7] = [
        (
            "layer blob is a FIFO",
            &layer_path,
            &fifo,
            "not a regular file",
        ),
        (
            "layer blob is /dev/zero",
            &layer_path,
            &zero,
            "not a regular file",
        ),
        (
            "manifest is a FIFO",
            &manifest_path,
            &fifo,
            "not a regular file",
        ),
        (
            "manifest is /dev/zero",
            &manifest_path,
            &zero,
            "not a regular file",
        ),
        (
            "manifest of 5 MiB",
            &manifest_path,
            &big,
            "larger than 4194304 bytes",
        ),
        (
            "index.json is a FIFO",
            &layout.join("index.json"),
            &fifo,
            "not a regular file",
        ),
        (
            "index.json of 5 MiB",
            &layout.join("index.json"),
            &big,
            "larger than 4194304 bytes",
        ),
    ];
    for (case, path, plant, want) in cases {
        let saved = std::fs::read(path).unwrap();
        std::fs::remove_file(path).unwrap();
        plant(path);
        let out = run.restore(&reference, &jail.target(), &[]);
        assert_eq!(out.status.code(), Some(6), "{case}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{case}: {}", stderr(&out));
        assert!(names(&jail.target()).is_empty(), "{case}");
        std::fs::remove_file(path).unwrap();
        std::fs::write(path, saved).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    report(&run.restore(&reference, &jail.target(), &[]));
}

// ---------------------------------------------------------------------------------------------
// Item 3: correct failure behaviour.

/// `--paths` problems are found before anything is moved aside or created, with exit 2.
fn paths_are_checked_first(run: Runner) {
    let jail = Jail::new();
    let tarball = benign(&jail, "a");
    let lines = vec![index_line("file", "f", 0o644, b"data", None)];
    let native = readable(
        Native::new(Tar::default().file("f", b"data").end(), &lines, 1, 0, 4)
            .publish(&jail.layout("native")),
    );
    std::fs::create_dir(jail.target()).unwrap();
    std::fs::write(jail.target().join("precious"), b"mine").unwrap();
    run.own(&jail.target());
    let before = jail.outside();
    for (reference, paths) in [
        (&tarball, "../escape"),
        (&tarball, "/abs"),
        (&tarball, "not-there"),
        (&native, "not-there"),
    ] {
        let out = run.restore(reference, &jail.target(), &["--force", "--paths", paths]);
        assert_eq!(out.status.code(), Some(2), "{paths}: {}", stderr(&out));
        assert_eq!(names(&jail.target()), ["precious"], "{paths}");
        assert_eq!(
            names(jail.path()),
            names_before(&jail),
            "{paths}: aside created"
        );
        jail.assert_outside(&before, paths);
    }
    let out = run.restore(&native, &jail.target(), &["--force", "--paths", "f"]);
    report(&out);
}

fn names_before(jail: &Jail) -> Vec<String> {
    let mut n: Vec<String> = names(jail.path())
        .into_iter()
        .filter(|n| !n.starts_with("target.wsr-aside-"))
        .collect();
    n.sort();
    n
}

/// Read-only, write-only and mode-0 directories (common in `.git` and vendored code) restore
/// for a non-root user too, with exactly their archived modes, and can be moved aside later.
/// `a/none/` holds enough directories that their modes are applied by several threads before
/// its own (the unpacker shares out the subtrees of the first level with 64 directories; a
/// top-level directory keeps owner rwx until it is moved into place, so it would not show an
/// order broken).
fn restrictive_directory_modes(run: Runner) {
    let jail = Jail::new();
    let mut tar = Tar::default()
        .dir("ro/", 0o555)
        .dir("ro/sub/", 0o555)
        .file_mode("ro/sub/f", b"ro", 0o444)
        .dir("wo/", 0o333)
        .file("wo/f", b"wo")
        .dir("none/", 0o000)
        .file("none/f", b"none")
        .dir("a/", 0o755)
        .dir("a/ro/", 0o500)
        .file("a/ro/f", b"a")
        .dir("a/none/", 0o000);
    let many: Vec<String> = (0..70).map(|i| format!("a/none/d{i:02}")).collect();
    for d in &many {
        tar = tar
            .dir(&format!("{d}/"), 0o500)
            .dir(&format!("{d}/x/"), 0o000);
    }
    let reference = publish_tar(&jail, "a", tar.end());
    report(&run.restore(&reference, &jail.target(), &[]));
    let mode = |p: &str| std::fs::metadata(jail.target().join(p)).unwrap().mode() & 0o7777;
    for (p, want) in [
        ("ro", 0o555),
        ("ro/sub", 0o555),
        ("wo", 0o333),
        ("none", 0o000),
        ("a/ro", 0o500),
        ("a/none", 0o000),
    ] {
        assert_eq!(mode(p), want, "{p}");
    }
    // Below a mode-0 directory only root may look.
    if std::fs::read_dir(jail.target().join("a/none")).is_ok() {
        for d in &many {
            assert_eq!(mode(d), 0o500, "{d}");
            assert_eq!(mode(&format!("{d}/x")), 0o000, "{d}/x");
        }
    }
    assert_eq!(
        std::fs::read(jail.target().join("ro/sub/f")).unwrap(),
        b"ro"
    );
    // Forced again: the restrictive directories are moved aside as they are.
    let r = report(&run.restore(&reference, &jail.target(), &["--force"]));
    let aside = PathBuf::from(r["moved_aside"].as_str().unwrap());
    assert_eq!(
        std::fs::metadata(aside.join("ro")).unwrap().mode() & 0o7777,
        0o555
    );
    assert_eq!(mode("none"), 0o000);
}

/// Exit codes say whose problem it is: unsafe or unrepresentable archive content is 6.
fn exit_codes(run: Runner) {
    let jail = Jail::new();
    let unsafe_entry = publish_tar(&jail, "a", Tar::default().file("../x", b"x").end());
    let out = run.restore(&unsafe_entry, &jail.target(), &[]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    // 4000 bytes of valid components below a deep target: longer than PATH_MAX together.
    let long: Vec<String> = (0..16).map(|i| format!("{i:0>249}")).collect();
    let long = long.join("/");
    let mut record = long.clone().into_bytes();
    record.push(0);
    let tar = Tar::default().record(b'L', &record).file("x", b"x").end();
    let reference = publish_tar(&jail, "b", tar);
    let deep = jail.path().join("d".repeat(200)).join("target");
    std::fs::create_dir_all(deep.parent().unwrap()).unwrap();
    run.own(deep.parent().unwrap());
    let out = run.restore(&reference, &deep, &[]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(names(&deep).is_empty());
}

// ---------------------------------------------------------------------------------------------
// A restore marked complete is on disk: a power loss after it cannot leave empty files behind a
// marker that says the restore succeeded.

/// Pages of `path` in the page cache that are dirty or under writeback, from `cachestat(2)`
/// (Linux 6.5); `None` where the kernel has no such call.
fn unwritten_pages(path: &Path) -> Option<u64> {
    /// The same number on every architecture (the generic syscall table).
    const SYS_CACHESTAT: libc::c_long = 451;
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        cache: u64,
        dirty: u64,
        writeback: u64,
        evicted: u64,
        recently_evicted: u64,
    }
    let file = std::fs::File::open(path).unwrap();
    let range = Range { off: 0, len: 0 };
    let mut stat = Stat::default();
    // SAFETY: both structs match the kernel's layout and outlive the call; `len: 0` means to
    // the end of the file.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            std::os::fd::AsRawFd::as_raw_fd(&file),
            &range as *const Range,
            &mut stat as *mut Stat,
            0u32,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSYS), "cachestat: {e}");
        return None;
    }
    Some(stat.dirty + stat.writeback)
}

fn on_tmpfs(path: &Path) -> bool {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut fs = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: a valid C string and a buffer of the right type.
    assert_eq!(unsafe { libc::statfs(c.as_ptr(), fs.as_mut_ptr()) }, 0);
    // SAFETY: statfs succeeded, so it filled the buffer.
    unsafe { fs.assume_init() }.f_type == libc::TMPFS_MAGIC
}

#[test]
fn a_completed_restore_is_on_disk() {
    let jail = Jail::new();
    if on_tmpfs(jail.path()) {
        eprintln!(
            "the temporary directory is on tmpfs, whose pages are never written: not checked"
        );
        return;
    }
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    let tar = Tar::default().file("big", &data).end();
    let lines = vec![index_line("file", "big", 0o644, &data, None)];
    let native = Native::new(tar, &lines, 1, 0, data.len() as u64);
    let reference = readable(native.publish(&jail.layout("big")));
    let run = Runner { uid: None };
    report(&run.restore(&reference, &jail.target(), &[]));
    let restored = jail.target().join("big");
    assert_eq!(std::fs::read(&restored).unwrap(), data);
    match unwritten_pages(&restored) {
        Some(pages) => assert_eq!(pages, 0, "restored data still waits in the page cache"),
        None => eprintln!("this kernel has no cachestat: not checked"),
    }
}

#[test]
fn the_tree_is_flushed_while_a_restore_writes_it() {
    let jail = Jail::new();
    if on_tmpfs(jail.path()) {
        eprintln!("the temporary directory is on tmpfs: not checked");
        return;
    }
    let tree = jail.target();
    std::fs::create_dir(&tree).unwrap();
    let flush = wsr_restore::target::TreeFlush::start(&tree).unwrap();
    let written = tree.join("written");
    std::fs::write(&written, vec![7u8; 4 << 20]).unwrap();
    // Left to itself, the kernel writes a dirty page back after 30 s (`dirty_expire_centisecs`);
    // the flushes along the way write it within a period, long before `finish`.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match unwritten_pages(&written) {
            None => {
                eprintln!("this kernel has no cachestat: not checked");
                break;
            }
            Some(0) => break,
            Some(pages) if std::time::Instant::now() > deadline => {
                panic!("{pages} pages still unwritten 10 s after they were written")
            }
            Some(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
    flush.finish(&tree).unwrap();
}

fn each_runner(case: fn(Runner)) {
    for run in Runner::all() {
        eprintln!("as {run:?}");
        case(run);
    }
}

#[test]
fn reserved_names_are_never_restored() {
    each_runner(reserved_names_in_the_archive);
}

#[test]
fn marker_named_entries_are_plain_data() {
    each_runner(names_like_the_markers);
}

#[test]
fn planted_staging_directories_are_not_trusted() {
    each_runner(planted_staging_is_not_trusted);
    each_runner(planted_symlink_staging);
}

#[test]
fn sparse_entries_are_bounded_and_restored_as_holes() {
    each_runner(sparse_sizes_are_bounded);
    each_runner(sparse_files_become_holes);
}

#[test]
fn metadata_records_are_bounded_in_memory() {
    each_runner(metadata_is_bounded);
    // Every child so far (each restore and verify above) stayed under the memory bound.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a properly sized out-parameter.
    assert_eq!(
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) },
        0
    );
    let peak_mib = usage.ru_maxrss as f64 / 1024.0;
    eprintln!("peak RSS of a child: {peak_mib:.1} MiB");
    assert!(peak_mib < 100.0, "peak RSS {peak_mib:.1} MiB");
}

#[test]
fn end_of_archive_stops_reading() {
    each_runner(data_after_end_of_archive);
}

#[test]
fn native_documents_are_bounded_while_reading() {
    each_runner(native_documents_are_bounded);
}

#[test]
fn content_digests_are_checked_by_verify() {
    each_runner(content_digest_is_checked_where_nothing_else_vouches);
}

#[test]
fn layout_files_must_be_regular_and_small() {
    each_runner(layout_files_are_regular_and_bounded);
}

#[test]
fn paths_are_checked_before_anything_moves() {
    each_runner(paths_are_checked_first);
}

#[test]
fn restrictive_directory_modes_restore_for_any_user() {
    each_runner(restrictive_directory_modes);
}

#[test]
fn exit_codes_name_the_culprit() {
    each_runner(exit_codes);
}
