//! Certificates for the TLS tests and benchmark, made with the openssl CLI.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA, a server certificate for 127.0.0.1, a client certificate for dockerd, and a
/// client certificate from another CA.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        for ca in ["ca", "other-ca"] {
            run(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
            ]);
        }
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for (name, ca, ext) in [
            ("server", "ca", "server.ext"),
            ("docker", "ca", "client.ext"),
            ("stranger", "other-ca", "client.ext"),
        ] {
            run(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ]);
            run(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                ext,
                "-out",
                &format!("{name}.pem"),
            ]);
        }
        Pki {
            dir: dir.to_path_buf(),
        }
    }

    pub fn path(&self, f: &str) -> String {
        self.dir.join(f).display().to_string()
    }

    /// The daemon's TLS flags, with dockerd's client certificate.
    pub fn flags(&self, port: u16) -> Vec<String> {
        [
            "--listen",
            &format!("tcp://127.0.0.1:{port}"),
            "--tls-cert",
            &self.path("server.pem"),
            "--tls-key",
            &self.path("server.key"),
            "--tls-client-ca",
            &self.path("ca.pem"),
            "--tls-docker-cert",
            &self.path("docker.pem"),
            "--tls-docker-key",
            &self.path("docker.key"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}
