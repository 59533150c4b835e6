internal import Foundation
internal import HarpoonAPI
internal import ReservedIPAPI

/// The public ids of actions. Droplet actions are Harpoon events and reserved-IP actions are the orchestrator's, two
/// id spaces; the API interleaves them (events even, IP actions odd) so every action id is unique and says where it
/// lives, with no table to keep.
package enum ActionID {
    package enum Source: Equatable {
        case harpoon(Int64)
        case reservedIP(Int64)
    }

    package static func `public`(eventId: Int64) -> Int64 { eventId * 2 }
    package static func `public`(reservedIPActionId: Int64) -> Int64 { reservedIPActionId * 2 + 1 }

    package static func source(_ publicId: Int64) -> Source? {
        guard publicId > 0 else { return nil }
        return publicId % 2 == 0 ? .harpoon(publicId / 2) : .reservedIP(publicId / 2)
    }
}

/// DigitalOcean API v2 shapes of Shoal's objects.
struct Render {
    let catalog: Catalog

    static func time(_ timestamp: Google_Protobuf_Timestamp?) -> JSON {
        guard let timestamp, timestamp.seconds > 0 else { return .null }
        return .string(Date(timeIntervalSince1970: Double(timestamp.seconds)).formatted(.iso8601))
    }

    /// DigitalOcean's droplet statuses are new, active, off and archive: a droplet whose creation failed is shown as
    /// `archive` (it will never run), and its create action says `errored`.
    static func status(_ status: Harpoon_V1_Droplet.Status) -> String {
        switch status {
        case .new: "new"
        case .active: "active"
        case .off: "off"
        case .errored, .deleted, .unrecognized: "archive"
        }
    }

    func droplet(_ droplet: Harpoon_V1_Droplet) -> JSON {
        let size = droplet.size ?? Scheduler_V2_Size()
        var v4: [JSON] = []
        if !droplet.ipv4Address.isEmpty {
            let parts = droplet.ipv4Address.split(separator: ".")
            let gateway = parts.count == 4 ? parts.prefix(3).joined(separator: ".") + ".1" : ""
            v4.append(
                .object([
                    ("ip_address", .string(droplet.ipv4Address)), ("netmask", .string("255.255.255.0")),
                    ("gateway", .string(gateway)),
                    ("type", .string("public")),
                ]))
        }
        return .object([
            ("id", .int(droplet.id)), ("name", .string(droplet.name)), ("memory", .int(Int64(size.memoryMb))),
            ("vcpus", .int(Int64(size.vcpus))),
            ("disk", .int(Int64(size.diskGb))), ("locked", .bool(false)),
            ("status", .string(Self.status(droplet.status))),
            ("kernel", .null), ("created_at", Self.time(droplet.createdAt)), ("features", .array([])),
            ("backup_ids", .array([])),
            ("next_backup_window", .null), ("snapshot_ids", .array([])),
            (
                "image",
                .object([
                    ("id", .null), ("name", .string(droplet.image)),
                    ("distribution", .string(droplet.image.split(separator: "-").first.map(String.init) ?? "")),
                    ("slug", .string(droplet.image)), ("public", .bool(true)),
                    ("regions", .array([.string(droplet.region)])),
                    ("type", .string("base")), ("status", .string("available")),
                ])
            ),
            ("volume_ids", .array([])), ("size", catalog.sizeJSON(for: size)), ("size_slug", .string(size.slug)),
            ("networks", .object([("v4", .array(v4)), ("v6", .array([]))])),
            ("region", catalog.regionJSON(droplet.region)),
            ("tags", .array([])), ("vpc_uuid", .null),
        ])
    }

    func action(_ event: Harpoon_V1_Event) -> JSON {
        let status: String =
            switch event.status {
            case .completed: "completed"
            case .errored: "errored"
            default: "in-progress"
            }
        let terminal = event.status == .completed || event.status == .errored
        return .object([
            ("id", .int(ActionID.public(eventId: event.id))), ("status", .string(status)),
            ("type", .string(event.type)),
            ("started_at", Self.time(event.createdAt)), ("completed_at", terminal ? Self.time(event.updatedAt) : .null),
            ("resource_id", .int(event.dropletId)), ("resource_type", .string("droplet")),
            ("region", catalog.regionJSON(event.region)),
            ("region_slug", .string(event.region)),
        ])
    }

    func action(_ action: Reservedip_V1_Action, legacy: Bool) -> JSON {
        let status: String =
            switch action.status {
            case .completed: "completed"
            case .errored: "errored"
            default: "in-progress"
            }
        return .object([
            ("id", .int(ActionID.public(reservedIPActionId: action.id))), ("status", .string(status)),
            ("type", .string(action.type)),
            ("started_at", Self.time(action.startedAt)),
            ("completed_at", action.status == .inProgress ? .null : Self.time(action.completedAt)),
            ("resource_id", .int(Int64(IPNumber.of(action.ip)))),
            ("resource_type", .string(legacy ? "floating_ip" : "reserved_ip")),
            ("region", catalog.regionJSON(action.region)), ("region_slug", .string(action.region)),
            ("project_id", .string(action.projectId)),
        ])
    }

    func reservedIP(_ ip: Reservedip_V1_ReservedIP, droplet: Harpoon_V1_Droplet?) -> JSON {
        .object([
            ("ip", .string(ip.ip)), ("region", catalog.regionJSON(ip.region)),
            ("droplet", droplet.map(self.droplet) ?? .null),
            ("locked", .bool(ip.locked)), ("project_id", .string(ip.projectId)),
        ])
    }
}

/// An IPv4 address as the integer DigitalOcean shows as a reserved IP action's `resource_id`.
enum IPNumber {
    static func of(_ ip: String) -> UInt32 {
        ip.split(separator: ".").reduce(UInt32(0)) { $0 << 8 | (UInt32($1) ?? 0) }
    }
}
