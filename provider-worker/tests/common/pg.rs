//! A throwaway PostgreSQL server for tests (initdb + pg_ctl from the `postgresql` package).

#![allow(dead_code, clippy::unwrap_used)]

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
};

fn pg_bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin").join(name)).collect())
        .unwrap_or_default();
    versions.sort();
    versions
        .pop()
        .filter(|p| p.exists())
        .expect("PostgreSQL server binaries (apt-get install postgresql; `make setup` does)")
}

/// A throwaway PostgreSQL server; stopped and removed on drop.
pub struct Server {
    dir: PathBuf,
    port: u16,
}

fn as_postgres(cmd: &str) -> Command {
    // initdb refuses to run as root: switch to the `postgres` account when we are root.
    let root = Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
    if root {
        let mut c = Command::new("su");
        c.args(["postgres", "-s", "/bin/sh", "-c", cmd]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", cmd]);
        c
    }
}

impl Server {
    pub fn start() -> Server {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("compute-pg-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let _ = Command::new("chmod").arg("777").arg(&dir).status();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let data = dir.join("data");
        let init = format!(
            "{} -D {} -U compute --auth=trust -E UTF8 >{}/initdb.log 2>&1",
            pg_bin("initdb").display(),
            data.display(),
            dir.display()
        );
        assert!(
            as_postgres(&init).status().unwrap().success(),
            "initdb failed: {}",
            log(&dir, "initdb.log")
        );
        let start = format!(
            "{} -D {} -w -l {}/server.log -o \"-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off\" start",
            pg_bin("pg_ctl").display(),
            data.display(),
            dir.display(),
            dir.display()
        );
        assert!(
            as_postgres(&start).status().unwrap().success(),
            "pg_ctl start failed: {}",
            log(&dir, "server.log")
        );
        Server { dir, port }
    }

    /// Restart the server (`pg_ctl restart -m fast`): every connection is cut.
    pub fn restart(&self) {
        let restart = format!(
            "{} -D {} -w -m fast restart",
            pg_bin("pg_ctl").display(),
            self.dir.join("data").display()
        );
        assert!(
            as_postgres(&restart).status().unwrap().success(),
            "pg_ctl restart failed: {}",
            log(&self.dir, "server.log")
        );
    }

    pub fn url(&self) -> String {
        format!("host=127.0.0.1 port={} user=compute dbname=postgres", self.port)
    }
}

fn log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

impl Drop for Server {
    fn drop(&mut self) {
        let stop = format!(
            "{} -D {} -m immediate stop",
            pg_bin("pg_ctl").display(),
            self.dir.join("data").display()
        );
        let _ = as_postgres(&stop).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
