// Running Shoal's executables as child processes: what the launcher (shoal-local), pipeline-bench and the
// multi-process tests share.
package import Foundation
internal import Synchronization

/// An executable run as a child process, its standard output and error collected (and written to a log file, if
/// given), with waits on what it prints and on its exit.
package final class ChildProcess: Sendable {
    package let path: String
    package let arguments: [String]
    private let environment: [String: String]
    private let directory: URL?
    package let logURL: URL?
    /// Output kept in memory at most (the log file, if any, has all of it).
    private let outputLimit: Int
    private let state = Mutex<(process: Process?, output: String)>((nil, ""))

    /// - Parameters:
    ///   - environment: added to this process's own.
    ///   - onExit: called with the exit status when the process ends by itself or is killed.
    package init(
        path: String, arguments: [String], environment: [String: String] = [:], directory: URL? = nil, log: URL? = nil,
        outputLimit: Int = .max
    ) {
        self.path = path
        self.arguments = arguments
        self.environment = environment
        self.directory = directory
        logURL = log
        self.outputLimit = outputLimit
    }

    /// Starts it; `onExit` gets its exit status when it ends.
    package func start(onExit: (@Sendable (Int32) -> Void)? = nil) throws {
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw ChildProcessError(message: "\(path) is not an executable: build it first (swift build)")
        }
        let logHandle: FileHandle?
        if let log = logURL {
            if !FileManager.default.fileExists(atPath: log.path) {
                _ = FileManager.default.createFile(atPath: log.path, contents: nil)
            }
            logHandle = try FileHandle(forWritingTo: log)
            _ = try logHandle?.seekToEnd()
        } else {
            logHandle = nil
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, added in added }
        if let directory { process.currentDirectoryURL = directory }
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        let limit = outputLimit
        pipe.fileHandleForReading.readabilityHandler = { [weak self] handle in
            let data = handle.availableData
            guard !data.isEmpty else {
                handle.readabilityHandler = nil
                return
            }
            logHandle?.write(data)
            self?.state.withLock { state in
                state.output += String(decoding: data, as: UTF8.self)
                if state.output.utf8.count > limit { state.output = String(state.output.suffix(limit / 4)) }
            }
        }
        if let onExit { process.terminationHandler = { onExit($0.terminationStatus) } }
        state.withLock { $0 = (process, "") }
        try process.run()
    }

    package var pid: Int32 { state.withLock { $0.process?.processIdentifier ?? 0 } }
    package var isRunning: Bool { state.withLock { $0.process?.isRunning ?? false } }
    package var output: String { state.withLock { $0.output } }

    /// Waits until a line of its output contains `text`; returns that line.
    @discardableResult
    package func waitFor(_ text: String, timeout: Duration = .seconds(30)) async throws -> String {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while ContinuousClock.now < deadline {
            if let line = output.split(separator: "\n").first(where: { $0.contains(text) }) { return String(line) }
            if state.withLock({ $0.process.map { !$0.isRunning } ?? false }) {
                try await Task.sleep(for: .milliseconds(50))  // let the last output arrive
                if let line = output.split(separator: "\n").first(where: { $0.contains(text) }) { return String(line) }
                throw ChildProcessError(
                    message: "\(path) exited before printing '\(text)'; its output ends:\n\(output.suffix(2000))")
            }
            try await Task.sleep(for: .milliseconds(10))
        }
        throw ChildProcessError(
            message: "\(path) did not print '\(text)' within \(timeout); its output ends:\n\(output.suffix(2000))")
    }

    /// Waits for it to exit by itself (SIGKILL after `timeout`); returns its exit status.
    package func wait(timeout: Duration) async -> Int32 {
        guard let process = state.withLock({ $0.process }) else { return -1 }
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while process.isRunning, ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(20)) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        return process.terminationStatus
    }

    /// SIGTERM only: asks it to shut down; ``wait(timeout:)`` then gives its exit status.
    package func terminate() {
        guard let process = state.withLock({ $0.process }), process.isRunning else { return }
        kill(process.processIdentifier, SIGTERM)
    }

    /// SIGKILL: it dies mid-flight, as in a crash.
    package func crash() {
        guard let process = state.withLock({ $0.process }), process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// `signal` (SIGTERM: shut down), then SIGKILL if it has not exited within `grace`.
    package func stop(grace: Duration = .seconds(10), signal: Int32 = SIGTERM) {
        guard let process = state.withLock({ $0.process }), process.isRunning else { return }
        kill(process.processIdentifier, signal)
        let deadline = ContinuousClock.now.advanced(by: grace)
        while process.isRunning, ContinuousClock.now < deadline { usleep(10_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }
}

package struct ChildProcessError: Error, CustomStringConvertible {
    package let message: String
    package var description: String { message }
}

/// A free TCP port on 127.0.0.1 for a service to listen on, found by binding to it (and released).
///
/// It is taken from below the kernel's ephemeral range (`ip_local_port_range`): a port of that range, which is what
/// binding to port 0 gives, can be taken by any outgoing connection (to PostgreSQL, between the services) in the
/// moment before the service binds it. Below the range only another listener can take it. Falls back to the kernel's
/// choice when nothing below is free. A port is handed out once per process: binding and releasing cannot tell two
/// callers apart (a cluster's services and their metrics ports), and two services given one port would fight for it.
package func freeLoopbackPort() throws -> Int {
    for _ in 0..<16 {
        let port = try unusedLoopbackPort()
        if handedOutPorts.withLock({ $0.insert(port).inserted }) { return port }
    }
    throw ChildProcessError(message: "cannot find a free port not handed out already")
}

/// The ports ``freeLoopbackPort()`` has returned in this process.
private let handedOutPorts = Mutex<Set<Int>>([])

private func unusedLoopbackPort() throws -> Int {
    let firstEphemeral =
        (try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8))
        .flatMap { $0.split(whereSeparator: \.isWhitespace).first.flatMap { Int($0) } } ?? 32768
    if firstEphemeral > 12_000 {
        for _ in 0..<64 {
            let port = Int.random(in: 10_000..<firstEphemeral)
            if let bound = try bindLoopback(port: port) { return bound }
        }
    }
    guard let port = try bindLoopback(port: 0) else { throw ChildProcessError(message: "cannot find a free port") }
    return port
}

/// Binds a socket to 127.0.0.1:`port` (0: the kernel's choice) and releases it; the port bound, or `nil` if taken.
private func bindLoopback(port: Int) throws -> Int? {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw ChildProcessError(message: "cannot open a socket") }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = UInt16(port).bigEndian
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0
        }
    }
    return bound ? Int(UInt16(bigEndian: address.sin_port)) : nil
}
