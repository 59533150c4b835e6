// RPCChurn: 100,000 calls against a ShoalRPC server with a mix of successes, errors, cancellations and deadline
// expiries, printing the server's resident memory after every 10,000 calls. Part of `make bench-rpc`.
//
// usage: RPCChurn server PORT            serves rpctest.v1.Probe on 127.0.0.1:PORT
//        RPCChurn client PORT PID [N]    makes N calls (default 100000), reading the RSS of process PID
import Foundation
import ShoalRPC

struct Probe: Rpctest_V1_Probe.ServiceProtocol {
    func echo(request: Rpctest_V1_ProbeRequest, context: ServerContext) async throws -> Rpctest_V1_ProbeResponse {
        if request.delayMs > 0 { try await Task.sleep(for: .milliseconds(Int(request.delayMs))) }
        if request.failCode != 0 {
            throw RPCError(
                code: RPCError.Code(rawValue: Int(request.failCode)) ?? .unknown, message: "failing as asked")
        }
        return Rpctest_V1_ProbeResponse(text: request.text, payload: request.payload)
    }

    func expand(
        request: Rpctest_V1_ProbeRequest, response: RPCResponseWriter<Rpctest_V1_ProbeResponse>, context: ServerContext
    ) async throws {
        for index in 0..<Int(request.count) { try await response.write(Rpctest_V1_ProbeResponse(number: Int64(index))) }
    }

    func collect(
        requests: RPCRequestStream<Rpctest_V1_ProbeRequest>, context: ServerContext
    ) async throws -> Rpctest_V1_ProbeResponse {
        var sum: Int64 = 0
        for try await request in requests { sum += request.number }
        return Rpctest_V1_ProbeResponse(number: sum)
    }

    func converse(
        requests: RPCRequestStream<Rpctest_V1_ProbeRequest>, response: RPCResponseWriter<Rpctest_V1_ProbeResponse>,
        context: ServerContext
    ) async throws {
        for try await request in requests { try await response.write(Rpctest_V1_ProbeResponse(number: request.number)) }
    }
}

func residentKiB(of pid: String) -> Int {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return -1 }
    for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        return Int(line.split(separator: " ").dropFirst().first ?? "") ?? -1
    }
    return -1
}

let arguments = Array(CommandLine.arguments.dropFirst())
guard arguments.count >= 2, let port = Int(arguments[1]) else {
    print("usage: RPCChurn server PORT | RPCChurn client PORT PID [N]")
    exit(2)
}

if arguments[0] == "server" {
    let server = RPCServer(configuration: .init(host: "127.0.0.1", port: port), services: [Probe()])
    _ = try await server.start()
    FileHandle.standardOutput.write(Data("ready\n".utf8))
    while true { try await Task.sleep(for: .seconds(3600)) }
}

guard arguments.count >= 3 else {
    print("client needs PORT PID")
    exit(2)
}
let pid = arguments[2]
let total = arguments.count > 3 ? Int(arguments[3]) ?? 100_000 : 100_000
let client = RPCClient(targets: [("127.0.0.1", port)])
let probe = Rpctest_V1_Probe.Client(client)
let batch = 10_000
let concurrency = 64
var outcomes: [String: Int] = [:]
var samples: [(calls: Int, kib: Int)] = [(0, residentKiB(of: pid))]
print("server RSS before: \(samples[0].kib / 1024) MiB")

/// Call `index`: 70 % succeed (1 KiB payload), 10 % fail with a status, 10 % are cancelled by the caller while the
/// handler waits, 10 % pass their deadline while the handler waits.
func call(_ index: Int) async -> String {
    let payload = [UInt8](repeating: UInt8(truncatingIfNeeded: index), count: 1024)
    do {
        switch index % 10 {
        case 0:
            _ = try await probe.echo(.init(failCode: 9))
        case 1:
            let task = Task { try await probe.echo(.init(delayMs: 1000)) }
            try await Task.sleep(for: .milliseconds(2))
            task.cancel()
            _ = try await task.value
        case 2:
            _ = try await probe.echo(.init(delayMs: 1000), options: CallOptions(timeout: .milliseconds(3)))
        default:
            _ = try await probe.echo(.init(text: "ok", payload: payload))
        }
        return "ok"
    } catch let error as RPCError {
        return "\(error.code)"
    } catch {
        return "\(type(of: error))"
    }
}

let started = ContinuousClock.now
for start in stride(from: 0, to: total, by: batch) {
    await withTaskGroup(of: String.self) { group in
        var next = start
        let end = min(start + batch, total)
        for _ in 0..<concurrency where next < end {
            let index = next
            group.addTask { await call(index) }
            next += 1
        }
        while let outcome = await group.next() {
            outcomes[outcome, default: 0] += 1
            if next < end {
                let index = next
                group.addTask { await call(index) }
                next += 1
            }
        }
    }
    let kib = residentKiB(of: pid)
    samples.append((min(start + batch, total), kib))
    print("after \(min(start + batch, total)) calls: server RSS \(String(format: "%.1f", Double(kib) / 1024)) MiB")
}
let elapsed = ContinuousClock.now - started
print("outcomes: " + outcomes.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))
let first = samples[1].kib
let last = samples[samples.count - 1].kib
print(
    String(
        format: "server RSS after the first %d calls: %.1f MiB; after %d: %.1f MiB; growth %+.1f%% (%.0f s)",
        batch, Double(first) / 1024, total, Double(last) / 1024, Double(last - first) / Double(max(first, 1)) * 100,
        Double(elapsed.components.seconds)))
await client.close()
