#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// Where the generator reads `.proto` files from, by import path (`bench/v1/bench.proto`).
public protocol ProtoSourceProvider: Sendable {
    /// The text of the file at `path`, or `nil` if there is none.
    func source(for path: String) -> String?
    /// Where the file at `path` really is, for diagnostics (defaults to `path`).
    func displayPath(for path: String) -> String
}

extension ProtoSourceProvider {
    public func displayPath(for path: String) -> String { path }
}

/// Sources held in memory: for tests and for embedding.
public struct InMemorySourceProvider: ProtoSourceProvider {
    public var files: [String: String]

    public init(files: [String: String]) { self.files = files }

    public func source(for path: String) -> String? { files[path] }
}

/// Sources read from disk, searching a list of directories in order, like `protoc -I`.
public struct FileSystemSourceProvider: ProtoSourceProvider {
    public var protoPaths: [String]

    public init(protoPaths: [String]) { self.protoPaths = protoPaths }

    private func locate(_ path: String) -> String? {
        for root in protoPaths {
            let full = root.hasSuffix("/") ? root + path : root + "/" + path
            if access(full, R_OK) == 0 { return full }
        }
        return nil
    }

    public func source(for path: String) -> String? {
        guard let full = locate(path), let file = fopen(full, "rb") else { return nil }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while true {
            let n = fread(&chunk, 1, chunk.count, file)
            if n <= 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    public func displayPath(for path: String) -> String { locate(path) ?? path }
}
