//! `sinkstar serve`: the demo page (`www/`), the npm package with its WASM build (`pkg/`) and
//! the models in sinkstar's home folder, over HTTP on the loopback interface, so a browser
//! can run the demo without any other server.
//!
//! URLs: `/` is `www/index.html`, `/pkg/...` the package, `/models/NAME.gguf` a GGUF file of
//! `$SINKSTAR_HOME` (or the one `--model` names). Nothing outside these folders is served.

use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use sinkstar::model::{default_model_path, sinkstar_home};
use tiny_http::{Header, Method, Request, Response, Server};

#[derive(Args)]
pub struct ServeArgs {
    /// Port on 127.0.0.1 (0 picks a free one)
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Address to listen on; anything but loopback exposes the models to the network
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The repository whose www/ and pkg/ are served [default: the one sinkstar was built from]
    #[arg(long)]
    root: Option<PathBuf>,
}

/// What the server hands out, resolved once at start.
struct Site {
    www: PathBuf,
    pkg: PathBuf,
    models: PathBuf,
    /// A model given with `--model`, served under its file name.
    model: Option<PathBuf>,
}

pub fn serve(model: Option<&Path>, args: &ServeArgs) -> anyhow::Result<()> {
    if let Some(dir) = model.filter(|m| m.is_dir()) {
        anyhow::bail!(
            "{} is a directory: the browser demo reads one GGUF file",
            dir.display()
        );
    }
    let root = args
        .root
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let site = Arc::new(Site {
        www: root.join("www"),
        pkg: root.join("pkg"),
        models: sinkstar_home(),
        model: model.map(Path::to_path_buf),
    });
    if !site.www.join("index.html").is_file() {
        anyhow::bail!("no demo page at {}", site.www.join("index.html").display());
    }
    if !site.pkg.join("wasm").join("sinkstar_bg.wasm").is_file() {
        eprintln!("sinkstar: warning: no WASM build in pkg/wasm: run scripts/build-wasm.sh");
    }
    let server = Server::http((args.host.as_str(), args.port))
        .map_err(|e| anyhow::anyhow!("listening on {}:{}: {e}", args.host, args.port))?;
    let address = server
        .server_addr()
        .to_ip()
        .context("the server has no IP address")?;
    let default_model = default_model_path();
    let model_name = site
        .model
        .as_deref()
        .unwrap_or(&default_model)
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    // The test scripts read this line to learn the port.
    println!("sinkstar: serving the demo at http://{address}/?model=/models/{model_name}");
    eprintln!("sinkstar: open it in Chrome or Edge 113+ (Linux: chromium --enable-unsafe-webgpu); Ctrl-C stops");
    for request in server.incoming_requests() {
        let site = site.clone();
        // A model download takes a while: one thread per request keeps the page responsive.
        std::thread::spawn(move || {
            if let Err(e) = answer(&site, request) {
                eprintln!("sinkstar: serve: {e}");
            }
        });
    }
    Ok(())
}

fn answer(site: &Site, request: Request) -> std::io::Result<()> {
    if !matches!(request.method(), Method::Get | Method::Head) {
        let response = Response::from_string("only GET and HEAD").with_status_code(405);
        return request.respond(response);
    }
    let path = request
        .url()
        .split(['?', '#'])
        .next()
        .unwrap_or("/")
        .to_string();
    let Some(file) = site.resolve(&path) else {
        let response = Response::from_string(format!("{path}: not found")).with_status_code(404);
        return request.respond(response);
    };
    match File::open(&file) {
        Ok(f) => {
            let response = Response::from_file(f)
                .with_header(header("Content-Type", content_type(&file)))
                // The page and the package change while developing; the model is cached by
                // the page itself (Cache API).
                .with_header(header("Cache-Control", "no-cache"));
            request.respond(response)
        }
        Err(e) => {
            let response = Response::from_string(format!("{path}: {e}")).with_status_code(404);
            request.respond(response)
        }
    }
}

impl Site {
    /// The file for URL `path`, if it is one the site serves.
    fn resolve(&self, path: &str) -> Option<PathBuf> {
        let rest = path.trim_start_matches('/');
        let (base, rel) = if let Some(rel) = rest.strip_prefix("pkg/") {
            (&self.pkg, rel)
        } else if let Some(name) = rest.strip_prefix("models/") {
            return self.model_file(name);
        } else if rest.is_empty() {
            (&self.www, "index.html")
        } else {
            (&self.www, rest)
        };
        let rel = Path::new(rel);
        // Plain names only: no `..`, no absolute paths, no hidden files.
        let plain = rel.components().all(|c| match c {
            Component::Normal(name) => !name.to_string_lossy().starts_with('.'),
            _ => false,
        });
        let file = base.join(rel);
        (plain && file.is_file()).then_some(file)
    }

    fn model_file(&self, name: &str) -> Option<PathBuf> {
        let valid = name.ends_with(".gguf")
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            && !name.starts_with('.');
        if !valid {
            return None;
        }
        if let Some(model) = &self.model {
            if model.file_name().is_some_and(|n| n == name) {
                return Some(model.clone());
            }
        }
        let file = self.models.join(name);
        file.is_file().then_some(file)
    }
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("ASCII header")
}

fn content_type(file: &Path) -> &'static str {
    match file.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "wasm" => "application/wasm",
        "png" => "image/png",
        "svg" => "image/svg+xml",
        "ico" => "image/x-icon",
        "txt" | "md" => "text/plain; charset=utf-8",
        "ts" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(dir: &Path) -> Site {
        for sub in ["www", "pkg/wasm", "models", "secret"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        for file in [
            "www/index.html",
            "www/.hidden",
            "pkg/wasm/sinkstar_bg.wasm",
            "models/m.gguf",
            "secret/key",
        ] {
            std::fs::write(dir.join(file), "x").unwrap();
        }
        Site {
            www: dir.join("www"),
            pkg: dir.join("pkg"),
            models: dir.join("models"),
            model: None,
        }
    }

    #[test]
    fn resolves_only_served_files() {
        let dir = std::env::temp_dir().join(format!("sinkstar-serve-{}", std::process::id()));
        let site = site(&dir);
        assert_eq!(site.resolve("/"), Some(dir.join("www/index.html")));
        assert_eq!(
            site.resolve("/pkg/wasm/sinkstar_bg.wasm"),
            Some(dir.join("pkg/wasm/sinkstar_bg.wasm"))
        );
        assert_eq!(
            site.resolve("/models/m.gguf"),
            Some(dir.join("models/m.gguf"))
        );
        for refused in [
            "/../secret/key",
            "/pkg/../../secret/key",
            "/models/../secret/key",
            "/models/missing.gguf",
            "/.hidden",
            "/nope.html",
            "//secret/key",
        ] {
            assert_eq!(site.resolve(refused), None, "{refused}");
        }
        assert_eq!(content_type(Path::new("a.wasm")), "application/wasm");
        assert_eq!(
            content_type(Path::new("a.js")),
            "text/javascript; charset=utf-8"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
