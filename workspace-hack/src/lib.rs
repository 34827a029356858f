// No code: the package exists for its dependencies (Cargo.toml).
