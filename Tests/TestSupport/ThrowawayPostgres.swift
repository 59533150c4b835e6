package import Foundation
#if canImport(Glibc)
internal import Glibc
#endif

/// A PostgreSQL server of a test's own: a new cluster (initdb) in a temporary directory, listening on a free
/// loopback port, stopped and deleted by ``stop()``. Its one user, `shoal`, is trusted from 127.0.0.1.
///
/// PostgreSQL refuses to run as root, so as root (CI) the cluster belongs to `nobody` and its programs run through
/// `setpriv`. The binaries are found on `PATH`, in `SHOAL_PG_BIN`, or under `/usr/lib/postgresql/<version>/bin`
/// (Debian's `postgresql` package, which `make test` installs).
///
/// The cluster runs with `fsync=off`: the tests exercise what the stores do, not the machine's disk. (Services keep
/// PostgreSQL's default, `synchronous_commit=on` with fsync, which the stores check for at start.)
package final class ThrowawayPostgres: Sendable {
    package let port: Int
    package let directory: URL
    private let process: Process
    package static let user = "shoal"

    package enum Failure: Error, CustomStringConvertible {
        case binariesMissing
        case command(String, status: Int32, output: String)
        case notReady(String)

        package var description: String {
            switch self {
            case .binariesMissing: "PostgreSQL's initdb and postgres were not found (install Debian's postgresql, or set SHOAL_PG_BIN)"
            case .command(let command, let status, let output): "\(command) exited with \(status): \(output)"
            case .notReady(let log): "PostgreSQL did not become ready: \(log)"
            }
        }
    }

    /// The directory holding `initdb` and `postgres`, if PostgreSQL is installed.
    package static var binaries: URL? {
        var candidates: [String] = []
        if let explicit = ProcessInfo.processInfo.environment["SHOAL_PG_BIN"] { candidates.append(explicit) }
        candidates += (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init)
        let versions = (try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib/postgresql")) ?? []
        candidates += versions.compactMap(Int.init).sorted(by: >).map { "/usr/lib/postgresql/\($0)/bin" }
        return candidates.map { URL(fileURLWithPath: $0) }.first { directory in
            ["initdb", "postgres"].allSatisfy { FileManager.default.isExecutableFile(atPath: directory.appendingPathComponent($0).path) }
        }?.resolvingSymlinksInPath()
    }

    /// Creates and starts a cluster; waits (up to `timeout`) until it accepts connections.
    package static func start(timeout: Duration = .seconds(60)) throws -> ThrowawayPostgres {
        guard let bin = binaries else { throw Failure.binariesMissing }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("shoal-pg-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let data = directory.appendingPathComponent("data")
        let asRoot = getuid() == 0
        if asRoot {
            // The cluster's owner: nobody (its directory must be its own, mode 0700, which initdb sets).
            try FileManager.default.setAttributes([.ownerAccountID: 65534, .groupOwnerAccountID: 65534], ofItemAtPath: directory.path)
        }
        func command(_ program: String, _ arguments: [String]) -> (URL, [String]) {
            let path = bin.appendingPathComponent(program).path
            if asRoot {
                return (URL(fileURLWithPath: "/usr/bin/setpriv"), ["--reuid=65534", "--regid=65534", "--clear-groups", path] + arguments)
            }
            return (URL(fileURLWithPath: path), arguments)
        }
        do {
            let (initdb, initArguments) = command("initdb", ["-D", data.path, "-U", user, "--auth=trust", "-E", "UTF8", "--no-sync", "--locale=C"])
            try run(initdb, initArguments)
            var lastError: (any Error)?
            for _ in 0..<3 {
                // A free port, found by binding to it; another process could take it before the server does, so a
                // start that fails is tried again on another.
                let port = try freeLoopbackPort()
                let (postgres, arguments) = command("postgres", [
                    "-D", data.path, "-p", "\(port)", "-k", directory.path, "-c", "listen_addresses=127.0.0.1",
                    "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=300", "-c", "shared_buffers=64MB",
                ])
                let log = directory.appendingPathComponent("server-\(port).log")
                _ = FileManager.default.createFile(atPath: log.path, contents: nil)
                let process = Process()
                process.executableURL = postgres
                process.arguments = arguments
                let handle = try FileHandle(forWritingTo: log)
                process.standardOutput = handle
                process.standardError = handle
                try process.run()
                let server = ThrowawayPostgres(port: port, directory: directory, process: process)
                do {
                    try server.waitUntilReady(data: data, log: log, timeout: timeout)
                    return server
                } catch {
                    lastError = error
                    server.stopProcess()
                }
            }
            throw lastError ?? Failure.notReady("no attempt")
        } catch {
            try? FileManager.default.removeItem(at: directory)
            throw error
        }
    }

    private init(port: Int, directory: URL, process: Process) {
        self.port = port
        self.directory = directory
        self.process = process
    }

    /// `postgres://shoal@127.0.0.1:<port>/<database>`
    package func url(database: String = "postgres") -> String { "postgres://\(Self.user)@127.0.0.1:\(port)/\(database)" }

    /// PostgreSQL writes `ready` into the last line of `postmaster.pid` once it accepts connections.
    private func waitUntilReady(data: URL, log: URL, timeout: Duration) throws {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        let pidFile = data.appendingPathComponent("postmaster.pid")
        while ContinuousClock.now < deadline {
            if !process.isRunning {
                throw Failure.notReady((try? String(contentsOf: log, encoding: .utf8)) ?? "exited")
            }
            if let text = try? String(contentsOf: pidFile, encoding: .utf8),
               text.split(separator: "\n").map({ $0.trimmingCharacters(in: .whitespaces) }).contains("ready") {
                return
            }
            usleep(5_000)
        }
        throw Failure.notReady((try? String(contentsOf: log, encoding: .utf8)) ?? "timed out")
    }

    private func stopProcess() {
        guard process.isRunning else { return }
        // Fast shutdown: clients are disconnected, the server exits at once.
        kill(process.processIdentifier, SIGINT)
        let deadline = ContinuousClock.now.advanced(by: .seconds(20))
        while process.isRunning, ContinuousClock.now < deadline { usleep(2_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    /// Stops the server and deletes its cluster.
    package func stop() {
        stopProcess()
        try? FileManager.default.removeItem(at: directory)
    }

    /// Kills the server as a crash would (SIGKILL), leaving its files for a restart.
    package func crash() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    private static func run(_ executable: URL, _ arguments: [String]) throws {
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw Failure.command(([executable.path] + arguments).joined(separator: " "), status: process.terminationStatus, output: String(decoding: output, as: UTF8.self))
        }
    }
}

/// A TCP port on 127.0.0.1 that nothing listens on now.
package func freeLoopbackPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw POSIXError(.EMFILE) }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    let bound = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard bound == 0 else { throw POSIXError(.EADDRINUSE) }
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    return Int(UInt16(bigEndian: address.sin_port))
}
