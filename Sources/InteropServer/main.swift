// interop-server: grpc.testing.TestService on ShoalRPC, for gRPC's own interop clients.
//
// usage: interop-server --port N [--host H] [--use_tls true --tls_cert PEM --tls_key PEM]
// Flags also take the `--flag=value` form gRPC's interop runners use.
import InteropService
import ShoalRPC

#if canImport(Glibc)
    import Glibc
#endif

/// Writes a line straight to a file descriptor (unbuffered, so a parent process sees it at once).
func writeLine(_ text: String, to descriptor: Int32) {
    let line = Array((text + "\n").utf8)
    _ = line.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
}

func usage(_ message: String) -> Never {
    writeLine(
        "interop-server: \(message)\nusage: interop-server --port N [--host H] [--use_tls true --tls_cert PEM --tls_key PEM]",
        to: 2)
    exit(2)
}

var options: [String: String] = [:]
var arguments = CommandLine.arguments.dropFirst()[...]
while let argument = arguments.popFirst() {
    guard argument.hasPrefix("--") else { usage("unexpected argument '\(argument)'") }
    let flag = argument.dropFirst(2)
    if let equals = flag.firstIndex(of: "=") {
        options[String(flag[..<equals])] = String(flag[flag.index(after: equals)...])
    } else if let value = arguments.popFirst() {
        options[String(flag)] = value
    } else {
        usage("--\(flag) needs a value")
    }
}
guard let portText = options["port"], let port = Int(portText), (0...65535).contains(port) else {
    usage("--port N is required")
}
var configuration = RPCServer.Configuration(host: options["host"] ?? "127.0.0.1", port: port)
if options["use_tls"] == "true" {
    guard let cert = options["tls_cert"], let key = options["tls_key"] else {
        usage("--use_tls true needs --tls_cert and --tls_key")
    }
    configuration.tls = .server(certificateChain: cert, privateKey: key)
}
configuration.responseCompression = .gzip
let server = RPCServer(configuration: configuration, services: [InteropTestService()])
do {
    let address = try await server.start()
    writeLine("interop-server: grpc.testing.TestService on \(address)", to: 1)
} catch {
    usage("cannot start: \(error)")
}
while true { try await Task.sleep(for: .seconds(3600)) }
