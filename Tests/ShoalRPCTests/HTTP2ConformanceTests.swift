import Foundation
import RPCTestServices
import ShoalRPC
import TestSupport
import Testing

/// RFC 9113 frame by frame against a Shoal server: `Tests/Interop/h2_conformance.py` (Python, raw frames and the `h2`
/// package's HPACK) sends each violation the RFC names and checks the GOAWAY or RST_STREAM and error code it
/// prescribes, and that requests which are not gRPC get a complete HTTP response.
@Suite("HTTP/2 conformance (RFC 9113), frame by frame")
struct HTTP2ConformanceTests {
    @Test("every protocol violation gets the answer RFC 9113 prescribes; the server still answers a normal call after")
    func violations() async throws {
        try Interop.requirePython()
        try await withServer([ProbeService()], configure: { $0.http2.maxConcurrentStreams = 8 }) {
            server, client, port in
            let (status, output) = try await Interop.run(
                "h2_conformance.py", ["--port", String(port)], timeout: .seconds(300))
            #expect(status == 0, "\(output)")
            #expect(output.contains("cases passed"), "\(output)")
            #expect(output.components(separatedBy: "\nok ").count >= 60, "\(output)")
            let reply = try await Rpctest_V1_Probe.Client(client).echo(Rpctest_V1_ProbeRequest(text: "still here"))
            #expect(reply.text == "still here")
        }
    }
}
