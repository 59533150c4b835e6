internal import ChildProcess
package import Foundation

#if canImport(Glibc)
    internal import Glibc
#endif

/// A PostgreSQL server on 127.0.0.1 run by Shoal itself: a cluster (initdb) in a directory of ours, on a free loopback
/// port. Tests start throwaway ones (``start(in:durable:timeout:)`` with no directory: a temporary one, deleted by
/// ``stop()``); `make run --store postgres` keeps one under its data directory, started again on the same files.
/// Its one user, `shoal`, is trusted from 127.0.0.1 only.
///
/// PostgreSQL refuses to run as root, so as root (CI) the cluster belongs to `nobody` and its programs run through
/// `setpriv`. The binaries are found in `SHOAL_PG_BIN`, on `PATH`, or under `/usr/lib/postgresql/<version>/bin`
/// (Debian's `postgresql` package, which `make test` installs).
///
/// A throwaway cluster runs with `fsync=off`: tests exercise what the stores do, not the machine's disk. A kept one
/// (`durable`) keeps PostgreSQL's defaults, fsync and `synchronous_commit=on`, which the stores check for at start.
package final class LocalPostgres: Sendable {
    package let port: Int
    package let directory: URL
    private let process: ChildProcess
    /// Whether ``stop()`` deletes the cluster.
    private let throwaway: Bool
    package static let user = "shoal"

    package enum Failure: Error, CustomStringConvertible {
        case binariesMissing
        case command(String, status: Int32, output: String)
        case notReady(String)

        package var description: String {
            switch self {
            case .binariesMissing:
                "PostgreSQL's initdb and postgres were not found (install Debian's postgresql, or set SHOAL_PG_BIN)"
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
            ["initdb", "postgres"].allSatisfy {
                FileManager.default.isExecutableFile(atPath: directory.appendingPathComponent($0).path)
            }
        }?.resolvingSymlinksInPath()
    }

    /// Starts the cluster in `directory` (created with initdb if it has none yet; `nil`: a new temporary one, deleted
    /// by ``stop()``); waits (up to `timeout`) until it accepts connections.
    /// - Parameter settings: more server settings, `name=value` (e.g. `shared_preload_libraries=pg_stat_statements`).
    package static func start(
        in kept: URL? = nil, durable: Bool = false, settings: [String] = [], timeout: Duration = .seconds(60)
    ) async throws -> LocalPostgres {
        guard let bin = binaries else { throw Failure.binariesMissing }
        let directory =
            kept ?? FileManager.default.temporaryDirectory.appendingPathComponent("shoal-pg-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let data = directory.appendingPathComponent("data")
        let exists = FileManager.default.fileExists(atPath: data.appendingPathComponent("PG_VERSION").path)
        let asRoot = getuid() == 0
        if asRoot {
            // The cluster's owner: nobody (its directory must be its own, mode 0700, which initdb sets).
            try FileManager.default.setAttributes(
                [.ownerAccountID: 65534, .groupOwnerAccountID: 65534], ofItemAtPath: directory.path)
        }
        func command(_ program: String, _ arguments: [String]) -> (URL, [String]) {
            let path = bin.appendingPathComponent(program).path
            if asRoot {
                return (
                    URL(fileURLWithPath: "/usr/bin/setpriv"),
                    ["--reuid=65534", "--regid=65534", "--clear-groups", path] + arguments
                )
            }
            return (URL(fileURLWithPath: path), arguments)
        }
        do {
            if !exists {
                let (initdb, initArguments) = command(
                    "initdb",
                    [
                        "-D", data.path, "-U", user, "--auth-local=trust", "--auth-host=trust", "-E", "UTF8",
                        "--locale=C",
                    ] + (durable ? [] : ["--no-sync"]))
                try await run(initdb, initArguments)
            }
            var lastError: (any Error)?
            for _ in 0..<3 {
                // A free port, found by binding to it; another process could take it before the server does, so a
                // start that fails is tried again on another.
                let port = try freeLoopbackPort()
                let (postgres, arguments) = command(
                    "postgres",
                    [
                        "-D", data.path, "-p", "\(port)", "-k", directory.path, "-c", "listen_addresses=127.0.0.1",
                        "-c", "max_connections=300", "-c", "shared_buffers=64MB",
                    ] + (durable ? [] : ["-c", "fsync=off", "-c", "full_page_writes=off"])
                        + settings.flatMap { ["-c", $0] })
                let process = ChildProcess(
                    path: postgres.path, arguments: arguments, log: directory.appendingPathComponent("server.log"),
                    outputLimit: 65_536
                )
                try process.start()
                do {
                    try await process.waitFor("ready to accept connections", timeout: timeout)
                    return LocalPostgres(port: port, directory: directory, process: process, throwaway: kept == nil)
                } catch {
                    lastError = error
                    process.stop(grace: .seconds(20), signal: SIGINT)
                }
            }
            throw lastError ?? Failure.notReady("no attempt")
        } catch {
            if kept == nil { try? FileManager.default.removeItem(at: directory) }
            throw error
        }
    }

    private init(port: Int, directory: URL, process: ChildProcess, throwaway: Bool) {
        self.port = port
        self.directory = directory
        self.process = process
        self.throwaway = throwaway
    }

    /// `postgres://shoal@127.0.0.1:<port>/<database>`
    package func url(database: String = "postgres") -> String {
        "postgres://\(Self.user)@127.0.0.1:\(port)/\(database)"
    }

    /// Fast shutdown (SIGINT): clients are disconnected and the server exits at once.
    private func stopProcess() {
        process.stop(grace: .seconds(20), signal: SIGINT)
    }

    /// Stops the server (and deletes a throwaway cluster).
    package func stop() {
        stopProcess()
        if throwaway { try? FileManager.default.removeItem(at: directory) }
    }

    /// The server's process id.
    package var pid: Int32 { process.pid }

    /// Kills the server as a crash would (SIGKILL), leaving its files for a restart.
    package func crash() { process.crash() }

    /// Runs a one-off program (initdb) to its end; throws with its output if it fails.
    private static func run(_ executable: URL, _ arguments: [String]) async throws {
        let process = ChildProcess(path: executable.path, arguments: arguments)
        try process.start()
        let status = await process.wait(timeout: .seconds(300))
        guard status == 0 else {
            throw Failure.command(
                ([executable.path] + arguments).joined(separator: " "), status: status, output: process.output)
        }
    }
}
