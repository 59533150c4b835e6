// scheduler: Scheduler V2 (placement) on ShoalRPC.
//
// usage: scheduler [--host 127.0.0.1] [--port 50060] [--reservation-ttl-seconds 300]
import Scheduler
import SchedulerAPI

#if canImport(Glibc)
import Glibc
#endif

func fail(_ message: String) -> Never {
    let line = Array("scheduler: \(message)\nusage: scheduler [--host H] [--port N] [--reservation-ttl-seconds S]\n".utf8)
    _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    exit(2)
}

var options: [String: String] = [:]
var arguments = CommandLine.arguments.dropFirst()[...]
while let argument = arguments.popFirst() {
    guard argument.hasPrefix("--"), let value = arguments.popFirst() else { fail("bad argument '\(argument)'") }
    options[String(argument.dropFirst(2))] = value
}
guard let port = Int(options["port"] ?? "50060"), (0...65535).contains(port) else { fail("--port must be a port number") }
guard let ttl = Int(options["reservation-ttl-seconds"] ?? "300"), ttl > 0 else { fail("--reservation-ttl-seconds must be positive") }
let fleet = Fleet(reservationTTL: .seconds(ttl))
let server = RPCServer(
    configuration: .init(host: options["host"] ?? "127.0.0.1", port: port),
    services: [SchedulerService(fleet: fleet)]
)
do {
    let address = try await server.start()
    let line = Array("scheduler: serving scheduler.v2.Scheduler on \(address)\n".utf8)
    _ = line.withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
} catch {
    fail("cannot start: \(error)")
}
while true { try await Task.sleep(for: .seconds(3600)) }
