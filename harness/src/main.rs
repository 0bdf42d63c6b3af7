fn main() -> std::process::ExitCode {
    bootwatch::cli::main()
}
