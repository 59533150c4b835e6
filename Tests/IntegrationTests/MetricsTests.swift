import ChildProcess
import Foundation
import HarpoonAPI
import TestSupport
import Testing

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// One service's /metrics, as Prometheus would scrape it.
func scrape(_ port: Int) async throws -> String {
    let url = try #require(URL(string: "http://127.0.0.1:\(port)/metrics"))
    let (data, response) = try await URLSession.shared.data(from: url)
    #expect((response as? HTTPURLResponse)?.statusCode == 200)
    return String(decoding: data, as: UTF8.self)
}

/// The sum of a metric's samples whose labels include every one of `labels` (`name="value"`).
func sample(_ text: String, _ metric: String, _ labels: [String: String]) -> Double {
    var total = 0.0
    for line in text.split(separator: "\n") where line.hasPrefix(metric + "{") || line.hasPrefix(metric + " ") {
        guard labels.allSatisfy({ line.contains("\($0.key)=\"\($0.value)\"") }),
            let value = line.split(separator: " ").last.flatMap({ Double($0) })
        else {
            continue
        }
        total += value
    }
    return total
}

@Suite("metrics: every service serves Prometheus text", .serialized)
struct MetricsTests {
    @Test(
        "requests, errors by code and latency move on every service a creation crosses, and a refusal is counted by its code"
    )
    func redMetrics() async throws {
        let cluster = try await ProcessCluster(regions: ["nyc1"])
        do {
            try await cluster.start(agentsPerRegion: 2)
            let harpoon = cluster.harpoon
            let ports = (
                harpoon: cluster.metricsPorts["harpoon"] ?? 0, scheduler: cluster.metricsPorts["scheduler"] ?? 0,
                router: cluster.metricsPorts["router-nyc1"] ?? 0
            )
            let create = "/harpoon.v1.Harpoon/CreateDroplet"
            let beforeText = try await scrape(ports.harpoon)
            let before = sample(beforeText, "rpc_server_requests_total", ["method": create, "code": "ok"])
            let transactionsBefore = sample(beforeText, "harpoon_group_commit_writes_count", ["engine": "sqlite"])
            let writesBefore = sample(beforeText, "harpoon_group_commit_writes_sum", ["engine": "sqlite"])
            try await createDroplets(harpoon, prefix: "metrics", count: 5)
            let settled = try await waitUntilSettled(cluster, count: 5, timeout: .seconds(30))
            #expect(settled.allSatisfy { $0.status == .active })
            let harpoonText = try await scrape(ports.harpoon)
            #expect(sample(harpoonText, "rpc_server_requests_total", ["method": create, "code": "ok"]) == before + 5)
            #expect(
                sample(harpoonText, "rpc_server_duration_seconds_count", ["method": create]) >= 5,
                "no latency histogram for CreateDroplet")
            // The placements and deliveries those creations caused, on the services that served them.
            #expect(
                sample(
                    try await scrape(ports.scheduler), "rpc_server_requests_total",
                    ["method": "/scheduler.v2.Scheduler/PlaceBatch", "code": "ok"]) >= 1)
            #expect(
                sample(
                    try await scrape(ports.router), "rpc_server_requests_total",
                    ["method": "/eventrouter.v1.EventRouter/DeliverBatch", "code": "ok"]) >= 1)
            // Streams open now: the router holds the two agents' streams.
            #expect(
                sample(
                    try await scrape(ports.router), "rpc_server_streams_open",
                    ["method": "/eventrouter.v1.EventRouter/Connect"]) == 2)
            // Harpoon's own: the creations' writes went through group commit (each creation, placement and outcome a write
            // of a committed transaction); once everything settled the outbox is empty; connections are the pool's handles.
            #expect(sample(harpoonText, "harpoon_group_commit_writes_count", ["engine": "sqlite"]) > transactionsBefore)
            #expect(sample(harpoonText, "harpoon_group_commit_writes_sum", ["engine": "sqlite"]) >= writesBefore + 10)
            // How long after its request each create reached each stage: all five completed (a stage overtaken by the
            // next, as a delivery by an agent's quick outcome, is not recorded).
            #expect(
                sample(harpoonText, "harpoon_event_latency_seconds_count", ["type": "create", "stage": "completed"])
                    >= 5)
            #expect(
                sample(harpoonText, "harpoon_event_latency_seconds_sum", ["type": "create", "stage": "completed"]) > 0)
            // Client side too: Harpoon's calls to the scheduler, by method and code.
            #expect(
                sample(
                    harpoonText, "rpc_client_requests_total",
                    ["method": "/scheduler.v2.Scheduler/PlaceBatch", "code": "ok"]) >= 1)
            let gauges = try await eventually {
                let text = try await scrape(ports.harpoon)
                // Every create finished: none unfinished (the pair may never have been sampled while in flight).
                return text.contains("\nharpoon_outbox_entries ") && sample(text, "harpoon_outbox_entries", [:]) == 0
                    && sample(text, "harpoon_events_unfinished", ["type": "create"]) == 0
                    && sample(text, "harpoon_outbox_oldest_seconds", [:]) == 0
                    && sample(text, "harpoon_database_connections", [:]) >= 5
            }
            let shown = try await scrape(ports.harpoon).split(separator: "\n").filter { $0.hasPrefix("harpoon_") }
            #expect(gauges, "outbox and connection gauges: \(shown)")
            // The scheduler counts placements by outcome, and its hypervisors by state.
            _ = try await harpoon.createDroplet(
                .init(
                    customer: "alice", name: "huge", region: "nyc1",
                    size: Scheduler_V2_Size(slug: "s-32vcpu-192gb", vcpus: 32, memoryMb: 196_608, diskGb: 3840),
                    image: "ubuntu"
                ))
            let scheduled = try await eventually {
                let text = try await scrape(ports.scheduler)
                return sample(text, "scheduler_placements_total", ["region": "nyc1", "outcome": "placed"]) >= 5
                    && sample(text, "scheduler_placements_total", ["region": "nyc1", "outcome": "no_room"]) >= 1
                    && sample(text, "scheduler_hypervisors", ["region": "nyc1", "state": "ready"]) == 2
            }
            let schedulerShown = try await scrape(ports.scheduler).split(separator: "\n").filter {
                $0.hasPrefix("scheduler_")
            }
            #expect(scheduled, "\(schedulerShown)")
            // An event that cannot finish (a drain of a hypervisor no agent serves) shows as unfinished, by its type.
            _ = try await harpoon.setMaintenance(
                .init(hypervisorId: "nyc1-ghost", region: "nyc1", reason: "never connected"))
            let stuck = try await eventually {
                sample(try await scrape(ports.harpoon), "harpoon_events_unfinished", ["type": "maintenance"]) == 1
            }
            let unfinishedShown = try await scrape(ports.harpoon).split(separator: "\n").filter {
                $0.hasPrefix("harpoon_events_unfinished")
            }
            #expect(stuck, "\(unfinishedShown)")
            // What the router holds, and the connections every server has open (the router's: its two agents and Harpoon).
            let held = try await eventually {
                let router = try await scrape(ports.router)
                let scheduler = try await scrape(ports.scheduler)
                return sample(router, "router_agents_connected", [:]) == 2
                    && sample(router, "rpc_server_connections", [:]) >= 2
                    && sample(scheduler, "rpc_server_connections", [:]) >= 1
            }
            let routerShown = try await scrape(ports.router).split(separator: "\n").filter {
                $0.hasPrefix("router_") || $0.hasPrefix("rpc_server_connections")
            }
            #expect(held, "\(routerShown)")
            // A refusal is counted under its status code.
            _ = try? await harpoon.getDroplet(.init(id: 999_999, customer: "alice"))
            #expect(
                sample(
                    try await scrape(ports.harpoon), "rpc_server_requests_total",
                    ["method": "/harpoon.v1.Harpoon/GetDroplet", "code": "not_found"]) == 1)
        } catch {
            Issue.record("\(error)")
        }
        await cluster.stop()
    }
}
