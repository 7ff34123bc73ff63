//! Backups to a folder and back, on this machine's disk: round trips, reuse, damage,
//! deletion.

use std::ffi::OsStr;
use std::fs;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;

use super::format::node;
use super::*;
use crate::core::backup_url::Dest;
use crate::export::treecopy::Progress;

/// A page of either kind, encoded (for tests that write trees by hand).
mod erased {
    pub trait Page {
        fn encode(&self) -> (super::format::Id, Vec<u8>, usize);
    }
    impl<T: serde::Serialize> Page for T {
        fn encode(&self) -> (super::format::Id, Vec<u8>, usize) {
            super::node::encode_page(self).unwrap()
        }
    }
}

fn repo(dir: &Path, rt: &tokio::runtime::Runtime) -> Repo {
    let b = Backend::open(
        &Dest::Vfs {
            path: dir.to_path_buf(),
        },
        rt.handle().clone(),
        Path::new("/nonexistent-root"),
        Access::Write,
    )
    .unwrap();
    Repo::open(b, true).unwrap()
}

fn source(volume: &str) -> Source {
    Source {
        volume: volume.into(),
        snapshot: None,
        node: "n1".into(),
        consistency: "consistent".into(),
    }
}

fn backup(r: &Repo, id: &str, src: &Path) -> format::Summary {
    backup_after(r, id, src, None)
}

/// A backup whose parent (the last one this host made of the volume) is `parent`.
fn backup_after(r: &Repo, id: &str, src: &Path, parent: Option<&str>) -> format::Summary {
    create(
        r,
        id,
        &fs::File::open(src).unwrap(),
        &source("vol"),
        parent,
        &Progress::default(),
    )
    .unwrap()
}

fn restore_into(
    r: &Repo,
    id: &str,
    dst: &Path,
) -> crate::core::error::Result<crate::core::copy_report::CopyReport> {
    fs::create_dir_all(dst).unwrap();
    restore_with(r, id, dst, crate::export::treecopy::Privileges::Keep)
}

fn restore_with(
    r: &Repo,
    id: &str,
    dst: &Path,
    privileges: crate::export::treecopy::Privileges,
) -> crate::core::error::Result<crate::core::copy_report::CopyReport> {
    fs::create_dir_all(dst).unwrap();
    restore(
        r,
        id,
        &fs::File::open(dst).unwrap(),
        "n2",
        &Progress::default(),
        privileges,
        None,
    )
}

/// A listing of a tree: every path with its kind, size, mode, owner, mtime and content
/// hash (symlink targets as text), for comparing two trees.
fn listing(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut names: Vec<_> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            let what = if m.file_type().is_symlink() {
                format!("link {:?}", fs::read_link(&p).unwrap())
            } else if m.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if m.is_file() {
                format!("file {} {}", m.len(), Id::of(&fs::read(&p).unwrap()).hex())
            } else {
                "other".to_string()
            };
            out.push(format!(
                "{:?} {what} {:o} {}:{} {}",
                String::from_utf8_lossy(&rel),
                m.mode(),
                m.uid(),
                m.gid(),
                if m.file_type().is_symlink() {
                    0
                } else {
                    m.mtime()
                }
            ));
        }
    }
    out.sort();
    out
}

/// Bytes that do not compress (xorshift).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sample_tree(src: &Path) {
    fs::create_dir_all(src.join("a/b/c")).unwrap();
    fs::write(src.join("a/b/c/deep"), "deep").unwrap();
    fs::write(src.join("new\nline"), "n").unwrap();
    fs::write(src.join(OsStr::from_bytes(b"bin\xff")), "b").unwrap();
    fs::write(src.join("one"), "linked").unwrap();
    fs::hard_link(src.join("one"), src.join("a/two")).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", src.join("outside")).unwrap();
    fs::set_permissions(src.join("one"), fs::Permissions::from_mode(0o4750)).unwrap();
    std::os::unix::fs::chown(src.join("a/b"), Some(1234), Some(5678)).unwrap();
    nix::unistd::mkfifo(
        &src.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    // 3 MiB of varied data and a 256 MiB sparse file with data at both ends.
    let big: Vec<u8> = (0..3u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(src.join("big"), &big).unwrap();
    let f = fs::File::create(src.join("sparse")).unwrap();
    f.set_len(256 << 20).unwrap();
    f.write_all_at(b"head", 0).unwrap();
    f.write_all_at(&[9u8; 70_000], (256 << 20) - 70_000)
        .unwrap();
}

#[test]
fn a_tree_round_trips_with_links_holes_owners_and_odd_names() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    sample_tree(&src);
    let r = repo(&t.path().join("backups"), &rt);
    let s = backup(&r, "b1", &src);
    assert_eq!(s.tree.files, 6, "{s:?}");
    assert_eq!(
        (s.tree.hard_links, s.tree.symlinks, s.tree.fifos),
        (1, 1, 1)
    );
    assert_eq!(r.summaries().unwrap().len(), 1);

    let report = restore_into(&r, "b1", &dst).unwrap();
    assert_eq!(report.files, 6);
    assert_eq!(listing(&src), listing(&dst));
    let (one, two) = (
        fs::metadata(dst.join("one")).unwrap(),
        fs::metadata(dst.join("a/two")).unwrap(),
    );
    assert_eq!(one.ino(), two.ino(), "a hard link stays one file");
    assert_eq!(
        fs::read_link(dst.join("outside")).unwrap(),
        Path::new("/etc/shadow")
    );
    let sparse = fs::metadata(dst.join("sparse")).unwrap();
    assert_eq!(sparse.len(), 256 << 20);
    assert!(
        sparse.blocks() * 512 < 4 << 20,
        "holes stay holes: {} blocks",
        sparse.blocks()
    );
    // Nothing is restored over what is there.
    assert!(restore_into(&r, "b1", &dst).is_err());
}

/// Issue 24, 6: what a restore from a backup (anyone who can write the destination may
/// have made it) carries over by default: no set-id bits, no `security.` or `trusted.`
/// attributes, and the top folder keeps the new volume's own owner and mode; all of it
/// only when asked.
#[test]
fn a_restore_drops_set_id_bits_and_privileged_attributes_unless_asked() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("suid"), "binary").unwrap();
    fs::set_permissions(src.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::write(src.join("sub/sgid"), "binary").unwrap();
    fs::set_permissions(src.join("sub/sgid"), fs::Permissions::from_mode(0o2711)).unwrap();
    fs::set_permissions(&src, fs::Permissions::from_mode(0o7777)).unwrap();
    let privileged = crate::export::treecopy::write_xattr(
        fs::File::open(src.join("suid")).unwrap().as_fd(),
        b"trusted.caravan-test",
        b"x",
    );
    let user = crate::export::treecopy::write_xattr(
        fs::File::open(src.join("suid")).unwrap().as_fd(),
        b"user.caravan-test",
        b"y",
    );
    let r = repo(&t.path().join("backups"), &rt);
    backup(&r, "b1", &src);
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let xattr = |p: &Path, n: &[u8]| {
        crate::export::treecopy::read_xattrs(fs::File::open(p).unwrap().as_fd())
            .0
            .into_iter()
            .any(|(name, _)| name == n)
    };

    let dropped = t.path().join("dropped");
    fs::create_dir_all(&dropped).unwrap();
    fs::set_permissions(&dropped, fs::Permissions::from_mode(0o755)).unwrap();
    let report = restore_with(
        &r,
        "b1",
        &dropped,
        crate::export::treecopy::Privileges::Drop,
    )
    .unwrap();
    assert_eq!(mode(&dropped.join("suid")), 0o755);
    assert_eq!(mode(&dropped.join("sub/sgid")), 0o711);
    assert_eq!(mode(&dropped), 0o755, "the top folder keeps its own mode");
    assert_eq!(report.dropped_setid, 2, "{report:?}");
    if privileged {
        assert!(!xattr(&dropped.join("suid"), b"trusted.caravan-test"));
        assert_eq!(report.dropped_xattrs, 1, "{report:?}");
    }
    if user {
        assert!(
            xattr(&dropped.join("suid"), b"user.caravan-test"),
            "user attributes stay"
        );
    }

    let kept = t.path().join("kept");
    let report = restore_with(&r, "b1", &kept, crate::export::treecopy::Privileges::Keep).unwrap();
    assert_eq!(mode(&kept.join("suid")), 0o4755);
    assert_eq!(mode(&kept.join("sub/sgid")), 0o2711);
    assert_eq!(mode(&kept), 0o7777);
    assert_eq!((report.dropped_setid, report.dropped_xattrs), (0, 0));
    if privileged {
        assert!(xattr(&kept.join("suid"), b"trusted.caravan-test"));
    }

    // A clone copies the same way.
    let cloned = t.path().join("cloned");
    fs::create_dir_all(&cloned).unwrap();
    let report = crate::export::treecopy::copy_tree(
        &fs::File::open(&src).unwrap(),
        &fs::File::open(&cloned).unwrap(),
        &Progress::default(),
        crate::export::treecopy::Privileges::Drop,
    )
    .unwrap();
    assert_eq!(mode(&cloned.join("suid")), 0o755);
    assert_eq!(report.dropped_setid, 2, "{report:?}");
}

/// Issue 24, 9: a tree whose files all point at one stored chunk describes far more data
/// than is stored (or than its summary records): the restore stops at what the summary
/// records; and a backup larger than the volume's size is refused before anything is
/// written.
#[test]
fn a_restore_writes_no_more_than_the_backup_records_nor_the_volume_holds() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("one"), noise(7, 300 << 10)).unwrap();
    let r = repo(&t.path().join("backups"), &rt);
    backup(&r, "b1", &src);
    // Another machine rewrites the tree: 128 more names for the file's data.
    let mut summary = r.summary("b1").unwrap();
    let page = |id: &format::Id| {
        let stored =
            r.b.get(&format!("trees/{}", id.hex()), 1 << 20)
                .unwrap()
                .unwrap();
        node::decode_listing(&stored, id, "b1").unwrap().listing
    };
    let mut root = page(&summary.tree_id).remove(0);
    let node::NodeKind::Dir { pages } = &root.kind else {
        panic!("a root folder")
    };
    let one = page(&pages[0]).remove(0);
    let mut listing = vec![one.clone()];
    for i in 0..128 {
        let mut n = one.clone();
        n.name = format::Text::Utf8(format!("one{i:03}"));
        listing.push(n);
    }
    let put = |page: &dyn erased::Page| {
        let (id, stored, _) = page.encode();
        r.b.put(&format!("trees/{}", id.hex()), bytes::Bytes::from(stored))
            .unwrap();
        id
    };
    let listing_id = put(&node::Listing {
        format: node::TREE_FORMAT,
        listing,
    });
    root.kind = node::NodeKind::Dir {
        pages: vec![listing_id],
    };
    let (root_id, stored, _) = node::encode_page(&node::Listing {
        format: node::TREE_FORMAT,
        listing: vec![root],
    })
    .unwrap();
    r.b.put(
        &format!("trees/{}", root_id.hex()),
        bytes::Bytes::from(stored.clone()),
    )
    .unwrap();
    summary.tree_id = root_id;
    summary.tree_size = stored.len() as u64;
    r.b.put(
        "backups/b1.json",
        bytes::Bytes::from(serde_json::to_vec(&summary).unwrap()),
    )
    .unwrap();
    let dst = t.path().join("dst");
    let e = restore_with(&r, "b1", &dst, crate::export::treecopy::Privileges::Drop)
        .unwrap_err()
        .to_string();
    assert!(e.contains("more data than"), "{e}");
    let written: u64 = fs::read_dir(&dst)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().blocks() * 512)
        .sum();
    assert!(written < 1 << 20, "{written} bytes written");

    let e = restore(
        &r,
        "b1",
        &fs::File::open(t.path()).unwrap(),
        "n2",
        &Progress::default(),
        crate::export::treecopy::Privileges::Drop,
        Some(100 << 10),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("more than the volume's size"), "{e}");
}

#[test]
fn a_second_backup_sends_only_what_changed_and_deletes_free_what_no_one_needs() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    // 40 files of 1 MiB of distinct data, and 400 small ones.
    for i in 0..40u32 {
        fs::write(src.join(format!("f{i}")), noise(u64::from(i), 1 << 20)).unwrap();
    }
    for i in 0..400 {
        fs::write(src.join(format!("s{i}")), format!("small file {i}")).unwrap();
    }
    let r = repo(&t.path().join("backups"), &rt);
    let first = backup(&r, "b1", &src);
    assert_eq!(first.sent.new_chunks, first.sent.chunks);
    // One big file changed in the middle.
    fs::OpenOptions::new()
        .write(true)
        .open(src.join("f3"))
        .unwrap()
        .write_all_at(b"changed", 500_000)
        .unwrap();
    let second = backup_after(&r, "b2", &src, Some("b1"));
    assert!(
        second.sent.new_bytes * 20 < first.sent.new_bytes,
        "sent {} after {}",
        second.sent.new_bytes,
        first.sent.new_bytes
    );
    assert!(second.sent.reused_bytes >= 39 << 20, "{:?}", second.sent);
    assert_eq!(
        second.sent.unchanged_files, 439,
        "the files not changed are not read again: {:?}",
        second.sent
    );

    // Deleting the first frees what only it needed: the old version of f3's chunk.
    let d = delete(&r, "b1", "n1", &Progress::default()).unwrap();
    assert!(d.bytes_freed > 0 && d.bytes_freed < 2 << 20, "{d:?}");
    let v = verify(&r, "b2", "n1", &Progress::default()).unwrap();
    assert!(v.damaged.is_empty(), "{v:?}");
    let dst = t.path().join("dst");
    restore_into(&r, "b2", &dst).unwrap();
    assert_eq!(listing(&src), listing(&dst));
    assert!(matches!(r.summary("b1"), Err(Error::NoSuchBackup(_))));
    // The last one deleted leaves no pack.
    delete(&r, "b2", "n1", &Progress::default()).unwrap();
    assert!(r.b.list("packs").unwrap().is_empty());
    assert!(r.b.list("index").unwrap().is_empty());
}

#[test]
fn damage_is_named_by_file_in_verify_and_restore() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/victim"), "the data that will be damaged").unwrap();
    let r = repo(&t.path().join("backups"), &rt);
    backup(&r, "b1", &src);
    let v = verify(&r, "b1", "n1", &Progress::default()).unwrap();
    assert!(v.damaged.is_empty() && v.chunks == 1);
    // Flip a byte of the only pack.
    let packs = r.b.list("packs").unwrap();
    let p = t.path().join("backups/packs").join(&packs[0].name);
    let mut bytes = fs::read(&p).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&p, bytes).unwrap();
    let v = verify(&r, "b1", "n1", &Progress::default()).unwrap();
    assert_eq!(v.damaged.len(), 1, "{v:?}");
    assert_eq!(v.damaged[0].path, "/d/victim");
    let e = restore_into(&r, "b1", &t.path().join("dst"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/d/victim is damaged"), "{e}");
}

#[test]
fn an_interrupted_backup_is_not_listed_and_its_chunks_are_reused() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..24u32 {
        fs::write(src.join(format!("f{i:02}")), noise(u64::from(i), 1 << 20)).unwrap();
    }
    let r = repo(&t.path().join("backups"), &rt);
    // Stopped once some packs were sent.
    let progress = std::sync::Arc::new(Progress::default());
    let e = std::thread::scope(|s| {
        let p = progress.clone();
        s.spawn(move || {
            while p.bytes.load(std::sync::atomic::Ordering::Relaxed) < 20 << 20 {
                std::thread::yield_now();
            }
            p.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        create(
            &r,
            "b1",
            &fs::File::open(&src).unwrap(),
            &source("vol"),
            None,
            &progress,
        )
    });
    assert!(e.is_err());
    assert!(
        r.summaries().unwrap().is_empty(),
        "an interrupted backup is not listed"
    );
    assert!(
        !r.b.list("packs").unwrap().is_empty(),
        "what was sent stays"
    );
    let s = backup(&r, "b2", &src);
    assert!(
        s.sent.reused_bytes >= 16 << 20,
        "the sent chunks are reused: {:?}",
        s.sent
    );
    assert!(r.b.list("locks").unwrap().is_empty(), "locks are released");
}

#[test]
fn a_backup_that_cannot_be_read_keeps_every_chunk_when_another_is_deleted() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), noise(1, 1 << 20)).unwrap();
    let r = repo(&t.path().join("backups"), &rt);
    backup(&r, "b1", &src);
    fs::write(src.join("b"), noise(2, 1 << 20)).unwrap();
    backup(&r, "b2", &src);
    // b2's summary damaged (or written by a newer version): deleting b1 frees nothing.
    fs::write(t.path().join("backups/backups/b2.json"), b"{\"format\": 9}").unwrap();
    let e = delete(&r, "b1", "n1", &Progress::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no stored data was freed"), "{e}");
    assert!(
        matches!(r.summary("b1"), Err(Error::NoSuchBackup(_))),
        "b1 itself is deleted"
    );
    assert_eq!(r.chunks().unwrap().len(), 2, "both chunks kept");
    // The damaged one can be deleted too; then everything is freed.
    delete(&r, "b2", "n1", &Progress::default()).unwrap();
    assert!(r.b.list("packs").unwrap().is_empty());
}

/// Backups of format 1 (one tree object, made by earlier versions) are still restored
/// (their tree read as a stream), verified and deleted; a destination of format 1 that this
/// version writes to is marked format 2 (older versions then refuse it, clearly).
#[test]
fn a_backup_of_format_1_is_still_restored_and_its_destination_marked_format_2() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    sample_tree(&src);
    let r = repo(&t.path().join("backups"), &rt);
    let made = backup(&r, "b2", &src);
    // The same tree as format 1 wrote it: flat, parent-numbered entries.
    let mut entries: Vec<format::Entry> = Vec::new();
    let mut open: Vec<u32> = Vec::new();
    tree::walk(&r, &made, |_, step| {
        let (n, dir) = match step {
            tree::Step::Enter(n) => (n, true),
            tree::Step::Leaf(n) => (n, false),
            tree::Step::Leave(_) => {
                open.pop();
                return Ok(());
            }
        };
        let kind = match &n.kind {
            node::NodeKind::Dir { .. } => format::Kind::Dir,
            node::NodeKind::File {
                size,
                extents,
                link,
                ..
            } => format::Kind::File {
                size: *size,
                extents: extents.clone(),
                linked: link.is_some(),
            },
            node::NodeKind::Hardlink { .. } => format::Kind::Hardlink {
                // The sample tree has one linked file.
                to: entries
                    .iter()
                    .position(|e| matches!(e.kind, format::Kind::File { linked: true, .. }))
                    .unwrap() as u32,
            },
            node::NodeKind::Symlink { target } => format::Kind::Symlink {
                target: target.clone(),
            },
            node::NodeKind::Fifo => format::Kind::Fifo,
        };
        let index = entries.len() as u32;
        entries.push(format::Entry {
            parent: open.last().copied().unwrap_or(0),
            name: n.name.clone(),
            kind,
            uid: n.uid,
            gid: n.gid,
            mode: n.mode,
            atime: n.atime,
            mtime: n.mtime,
            ctime: n.ctime,
            ino: n.ino,
            xattrs: n.xattrs.clone(),
        });
        if dir {
            open.push(index);
        }
        Ok(())
    })
    .unwrap();
    let stored = format::Tree {
        format: format::V1_TREE_FORMAT,
        entries,
    }
    .encode()
    .unwrap();
    let mut old = made.clone();
    old.format = 1;
    old.id = "b1".into();
    old.tree_id = format::Id::of(&stored);
    old.tree_size = stored.len() as u64;
    r.b.put("trees/b1", bytes::Bytes::from(stored)).unwrap();
    r.b.put(
        "backups/b1.json",
        bytes::Bytes::from(serde_json::to_vec(&old).unwrap()),
    )
    .unwrap();
    let mut config = r.config.clone();
    config.format = 1;
    r.b.put(
        format::CONFIG,
        bytes::Bytes::from(serde_json::to_vec(&config).unwrap()),
    )
    .unwrap();

    restore_into(&r, "b1", &dst).unwrap();
    assert_eq!(listing(&src), listing(&dst));
    let v = verify(&r, "b1", "n2", &Progress::default()).unwrap();
    assert!(v.damaged.is_empty() && v.chunks > 0, "{v:?}");
    // Deleting the format 2 backup keeps what the format 1 one needs.
    delete(&r, "b2", "n2", &Progress::default()).unwrap();
    let again = t.path().join("again");
    restore_into(&r, "b1", &again).unwrap();
    assert_eq!(listing(&src), listing(&again));

    // Written to by this version: marked format 2.
    let reopened = repo(&t.path().join("backups"), &rt);
    assert_eq!(reopened.config.format, format::FORMAT);
}
