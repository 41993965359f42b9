fn main() -> std::process::ExitCode {
    portmap_userspace::cli::main()
}
