import ChildProcess
import Foundation
import HarpoonAPI
import TestSupport
import Testing

@Suite("logs: one request followed across the services", .serialized)
struct RequestLogTests {
    @Test(
        "a creation's request id and trace id appear in the logs of Harpoon, the scheduler, the router and the agent, and on the way back"
    )
    func followed() async throws {
        let cluster = try await ProcessCluster(regions: ["nyc1"])
        cluster.logLevel = "debug"
        do {
            try await cluster.start(agentsPerRegion: 1)
            let traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
            let metadata: Metadata = [
                "x-request-id": "req-followed-1", "traceparent": "00-\(traceID)-00f067aa0ba902b7-01",
            ]
            let created = try await cluster.harpoon.createDroplet(
                .init(customer: "alice", name: "followed", region: "nyc1", size: small, image: "ubuntu"),
                metadata: metadata,
                options: CallOptions(timeout: .seconds(30))
            )
            let settled = try await waitUntilSettled(cluster, count: 1, timeout: .seconds(30))
            #expect(settled.first?.status == .active)
            /// The lines of `name`'s log that carry the request's id and trace.
            func lines(_ name: String) -> [Substring] {
                (cluster.processes[name]?.output ?? "").split(separator: "\n").filter {
                    $0.contains("request_id=req-followed-1") && $0.contains("trace_id=\(traceID)")
                }
            }
            // Every service the creation crossed, the asynchronous hops included (the outbox's placement and delivery,
            // the agent's run): each logs it under the request's id and trace.
            for name in ["harpoon", "scheduler", "router-nyc1", "fleet-nyc1"] {
                let found = await eventually { !lines(name).isEmpty }
                #expect(
                    found,
                    "\(name) logged nothing for the request: \((cluster.processes[name]?.output ?? "").suffix(2000))")
            }
            #expect(lines("harpoon").contains { $0.contains("method=/harpoon.v1.Harpoon/CreateDroplet") })
            #expect(
                lines("scheduler").contains {
                    $0.contains("msg=placement") && $0.contains("event_id=\(created.event?.id ?? 0)")
                })
            #expect(
                lines("fleet-nyc1").contains {
                    $0.contains("msg=event") && $0.contains("droplet_id=\(created.droplet?.id ?? 0)")
                })
            // The way back: the router reports the agent's outcome to Harpoon as part of the request.
            let reported = await eventually {
                lines("harpoon").contains { $0.contains("method=/harpoon.v1.Harpoon/Report") }
            }
            #expect(reported, "\(lines("harpoon"))")
        } catch {
            Issue.record(error)
        }
        await cluster.stop()
    }
}
