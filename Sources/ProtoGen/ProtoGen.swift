import ProtoGenCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// `protogen`: generates Swift from .proto files. The build plugin runs it; it also works by hand.
///
/// ```
/// protogen --out DIR [--proto-path DIR]... [--visibility public|package|internal]
///          [--module-mapping FILE.proto=Module]... [--rpc] FILE.proto...
/// ```
@main
struct ProtoGen {
    static let usage = """
        usage: protogen --out DIR [--proto-path DIR]... [--visibility public|package|internal]
                        [--module-mapping FILE.proto=Module]... [--rpc] FILE.proto...

        Generates one Swift file per .proto FILE (named like bench_v1_bench.pb.swift) into DIR.
        FILEs and their imports are looked up under each --proto-path in order (default: the current directory).
        --rpc also generates a ShoalRPC server protocol and client for each service.
        """

    struct Arguments {
        var output: String?
        var protoPaths: [String] = []
        var files: [String] = []
        var options = GenerationContext.Options()
    }

    /// Writes a line to standard error.
    static func printError(_ line: String) {
        let bytes = Array((line + "\n").utf8)
        _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    }

    static func fail(_ message: String) -> Never {
        printError("protogen: \(message)")
        exit(2)
    }

    static func parse(_ args: [String]) -> Arguments {
        var result = Arguments()
        var iterator = args.makeIterator()
        func value(_ flag: String) -> String {
            guard let next = iterator.next() else { fail("\(flag) needs a value\n\(usage)") }
            return next
        }
        while let arg = iterator.next() {
            switch arg {
            case "--out": result.output = value(arg)
            case "--proto-path", "-I": result.protoPaths.append(value(arg))
            case "--visibility":
                let text = value(arg)
                guard let visibility = GeneratedVisibility(rawValue: text) else {
                    fail("unknown visibility '\(text)': use public, package or internal")
                }
                result.options.visibility = visibility
            case "--module-mapping":
                let mapping = value(arg).split(separator: "=", maxSplits: 1).map(String.init)
                guard mapping.count == 2 else { fail("--module-mapping takes FILE.proto=Module") }
                result.options.moduleMappings[mapping[0]] = mapping[1]
            case "--rpc": result.options.rpc = true
            case "--help", "-h":
                print(usage)
                exit(0)
            default:
                if arg.hasPrefix("-") { fail("unknown option \(arg)\n\(usage)") }
                result.files.append(arg)
            }
        }
        return result
    }

    static func main() {
        let arguments = parse(Array(CommandLine.arguments.dropFirst()))
        guard let output = arguments.output else { fail("--out is required\n\(usage)") }
        guard !arguments.files.isEmpty else { fail("no .proto files given\n\(usage)") }
        let provider = FileSystemSourceProvider(protoPaths: arguments.protoPaths.isEmpty ? ["."] : arguments.protoPaths)
        let generator = SwiftGenerator(provider: provider, options: arguments.options)
        let files: [GeneratedFile]
        do {
            files = try generator.generate(arguments.files)
        } catch {
            for diagnostic in error.diagnostics {
                var located = diagnostic
                located.location.file = provider.displayPath(for: diagnostic.location.file)
                printError(located.description)
            }
            exit(1)
        }
        mkdir(output, 0o755)
        for file in files {
            let path = output + "/" + file.name
            guard writeFile(file.contents, to: path) else {
                fail("cannot write \(path): \(String(cString: strerror(errno)))")
            }
        }
    }

    /// Writes `contents` unless the file already holds exactly that, so unchanged output keeps its timestamp.
    static func writeFile(_ contents: String, to path: String) -> Bool {
        let bytes = Array(contents.utf8)
        if let existing = fopen(path, "rb") {
            var old: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 65_536)
            while true {
                let n = fread(&chunk, 1, chunk.count, existing)
                if n <= 0 { break }
                old.append(contentsOf: chunk[0..<n])
            }
            fclose(existing)
            if old == bytes { return true }
        }
        guard let file = fopen(path, "wb") else { return false }
        defer { fclose(file) }
        return fwrite(bytes, 1, bytes.count, file) == bytes.count
    }
}
