#!/usr/bin/env python3
"""Build the offline carbon tables embedded in carbon-agent (agent/data/*.csv).

Reproducible: reads the public reference data in ../shared/data (see its SOURCES.md for
origins and licences) and the ISO 3166 code lists of Debian's `iso-codes` package
(/usr/share/iso-codes/json), and writes:

  agent/data/grid-intensity.csv          one row per location: kind, code, alpha2, name,
                                         country (ISO alpha-3), g_per_kwh, year, source id
  agent/data/grid-intensity-sources.csv  source id -> title, licence, origin
  agent/data/pue.csv                     PUE per provider (Green Algorithms, CC BY 4.0)

Only permissively licensed inputs are used (CodeCarbon MIT, Cloud Carbon Footprint
Apache-2.0, Google Apache-2.0, Green Algorithms CC BY 4.0, mlco2/impact MIT). The Boavizta
files (AGPL-3.0) are never read.

Usage: python3 scripts/build-carbon-tables.py [--data DIR] [--out DIR]
"""
import argparse
import csv
import io
import json
import os
import re
import sys

LB_PER_MWH_TO_G_PER_KWH = 453.59237 / 1000.0  # 1 lb = 453.59237 g; 1 MWh = 1000 kWh

SOURCES = {
    "owid": ("Our World in Data (Ember, Energy Institute) via CodeCarbon global_energy_mix.json",
             "MIT (CodeCarbon); OWID data CC BY 4.0",
             "mlco2/codecarbon codecarbon/data/private_infra/global_energy_mix.json @4f166a5"),
    "ga": ("Green Algorithms CI_aggregated.csv (carbonfootprint.com, national agencies)",
           "CC BY 4.0 (Lannelongue et al., Adv. Sci. 2021, doi:10.1002/advs.202100707)",
           "GreenAlgorithms/green-algorithms-tool data/v3.0/CI_aggregated.csv @28c9d8f"),
    "egrid2016": ("US EPA eGRID 2016 via CodeCarbon usa_emissions.json",
                  "MIT (CodeCarbon)",
                  "mlco2/codecarbon codecarbon/data/private_infra/2016/usa_emissions.json @652389a"),
    "canada2023": ("Canadian generation mix 2023 via CodeCarbon canada_energy_mix.json, "
                   "weighted by CodeCarbon carbon_intensity_per_source.json factors",
                   "MIT (CodeCarbon)",
                   "mlco2/codecarbon codecarbon/data/private_infra/2023/canada_energy_mix.json @c2aceb4"),
    "nordic": ("ENTSO-E historical averages via CodeCarbon nordic_emissions.json",
               "MIT (CodeCarbon)",
               "mlco2/codecarbon codecarbon/data/private_infra/nordic_emissions.json @f30457b"),
    "google2024": ("Google Cloud region carbon data 2024 (location-based grid intensity)",
                   "Apache-2.0 (Google)",
                   "GoogleCloudPlatform/region-carbon-info data/yearly/2024.csv @49f3f26"),
    "google2023": ("Google Cloud region carbon data 2023 via CodeCarbon impact.csv",
                   "MIT (CodeCarbon)",
                   "mlco2/codecarbon codecarbon/data/cloud/impact.csv @ca104ad"),
    "ccf-aws": ("Cloud Carbon Footprint grid emissions factors for AWS (EPA eGRID, EEA, carbonfootprint.com)",
                "Apache-2.0 (Cloud Carbon Footprint)",
                "cloud-carbon-footprint/ccf-coefficients data/grid-emissions-factors-aws.csv @ae12c38"),
    "ccf-azure": ("Cloud Carbon Footprint grid emissions factors for Azure (EPA eGRID, EEA, carbonfootprint.com)",
                  "Apache-2.0 (Cloud Carbon Footprint)",
                  "cloud-carbon-footprint/ccf-coefficients data/grid-emissions-factors-azure.csv @04b3e91"),
    "mlco2": ("ML CO2 Impact calculator impact.csv (eGRID 2016, carbonfootprint.com 2018, others)",
              "MIT (mlco2/impact)",
              "mlco2/impact data/impact.csv @96c7c2e"),
    "world": ("World average, IEA Global Energy & CO2 Status Report 2019, via CodeCarbon carbon_intensity_per_source.json",
              "MIT (CodeCarbon)",
              "mlco2/codecarbon codecarbon/data/private_infra/carbon_intensity_per_source.json @ee46cd4"),
}


def read_text(path):
    with open(path, encoding="utf-8-sig", newline="") as f:  # utf-8-sig strips the BOM
        return f.read()


def csv_rows(path, skip_lines=0):
    text = read_text(path)
    lines = text.splitlines()[skip_lines:]
    return list(csv.DictReader(io.StringIO("\n".join(lines))))


def iso_tables(iso_dir):
    with open(os.path.join(iso_dir, "iso_3166-1.json"), encoding="utf-8") as f:
        countries = json.load(f)["3166-1"]
    with open(os.path.join(iso_dir, "iso_3166-2.json"), encoding="utf-8") as f:
        subdivisions = json.load(f)["3166-2"]
    a3_to_a2 = {c["alpha_3"]: c["alpha_2"] for c in countries}
    names = {}
    for c in countries:
        for key in ("name", "common_name", "official_name"):
            if key in c:
                names[c[key].lower()] = c["alpha_3"]
    return a3_to_a2, names, subdivisions


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(here)
    default_data = next((d for d in (os.path.join(repo, "..", "shared", "data"),
                                     os.path.join(repo, "..", "..", "shared", "data"),
                                     os.path.join(repo, "shared", "data")) if os.path.isdir(d)),
                        None)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=default_data, help="folder with the reference data (shared/data)")
    ap.add_argument("--iso", default="/usr/share/iso-codes/json", help="Debian iso-codes JSON folder")
    ap.add_argument("--out", default=os.path.join(repo, "agent", "data"))
    args = ap.parse_args()
    if not args.data or not os.path.isdir(args.data):
        sys.exit("reference data folder not found; pass --data DIR (the project's shared/data)")
    data = args.data
    a3_to_a2, name_to_a3, subdivisions = iso_tables(args.iso)
    name_to_a3.update({"england": "GBR", "united kingdom": "GBR", "usa": "USA", "united states": "USA",
                       "united states of america": "USA", "south korea": "KOR", "hong kong": "HKG",
                       "taiwan": "TWN", "russia": "RUS", "iran": "IRN", "vietnam": "VNM",
                       "netherlands": "NLD", "czechia": "CZE", "czech republic": "CZE",
                       # places named by the cloud tables whose country no table gives
                       "helsinki": "FIN", "frankfurt": "DEU", "brussels": "BEL", "gavle": "SWE",
                       "arizona": "USA", "stockholm": "SWE", "doha": "QAT", "mexico": "MEX",
                       "oklahoma": "USA", "georgia": "USA"})

    rows = {}  # code -> row dict

    def put(row, prefer_newer=True):
        code = row["code"]
        old = rows.get(code)
        if old is not None:
            if not prefer_newer:
                return
            if (old["year"] or 0) >= (row["year"] or 0):
                return
        rows[code] = row

    # 1. Countries: OWID via CodeCarbon (alpha-3 keys).
    with open(os.path.join(data, "carbon-intensity-by-country.json"), encoding="utf-8") as f:
        owid = json.load(f)
    for a3, v in sorted(owid.items()):
        if v.get("carbon_intensity") is None:
            continue
        put(dict(kind="country", code=a3, alpha2=a3_to_a2.get(a3, ""), name=v["country_name"],
                 country=a3, g=float(v["carbon_intensity"]), year=int(v["year"]), source="owid"))

    # 2. Sub-national.
    sub_by_name = {}
    for s in subdivisions:
        sub_by_name[(s["code"][:2], s["name"].lower())] = s["code"]
    # 2a. Green Algorithms regions (US states, Canadian provinces, Australian states, ...).
    for r in csv_rows(os.path.join(data, "carbon-intensity-green-algorithms.csv"), skip_lines=1):
        code = r["location"].strip()
        if r["Type"].strip() != "Region" or "-" not in code:
            continue
        text = (r.get("source") or "") + " " + (r.get("comments") or "")
        m = re.search(r"[Dd]ata from (?:\w+ )?(\d{4})", text) or re.search(r"(20\d\d)", text)
        a2 = code.split("-")[0]
        a3 = next((k for k, v in a3_to_a2.items() if v == a2), "")
        put(dict(kind="subnational", code=code, alpha2="", name=f'{r["regionName"].strip()}, {r["countryName"].strip()}',
                 country=a3, g=float(r["carbonIntensity"]), year=int(m.group(1)) if m else None, source="ga"))
    # 2b. US states, eGRID 2016 (kept where Green Algorithms has no newer figure).
    with open(os.path.join(data, "usa_emissions.json"), encoding="utf-8") as f:
        usa = json.load(f)
    for state, v in sorted(usa.items()):
        if state.startswith("_") or state == "usa":
            continue
        put(dict(kind="subnational", code="US-" + v["regionCode"], alpha2="", name=f"{state.title()}, United States",
                 country="USA", g=round(v["emissions"] * LB_PER_MWH_TO_G_PER_KWH, 3), year=2016,
                 source="egrid2016"))
    # 2c. Canadian provinces: 2023 mix x per-source factors.
    with open(os.path.join(data, "carbon-intensity-per-source.json"), encoding="utf-8") as f:
        per_source = json.load(f)
    factor = {"coal": per_source["coal"], "petroleum": per_source["petroleum"],
              "naturalGas": per_source["natural_gas"], "hydro": per_source["hydroelectricity"],
              "nuclear": per_source["nuclear"], "solar": per_source["solar"], "wind": per_source["wind"]}
    # biomass, tidal and other have no factor in that table: they count as 0 (documented).
    with open(os.path.join(data, "canada_energy_mix.json"), encoding="utf-8") as f:
        canada = json.load(f)
    for prov, mix in sorted(canada.items()):
        code = sub_by_name.get(("CA", prov.lower()))
        if code is None:
            sys.exit(f"canada_energy_mix.json: no ISO 3166-2 code for province {prov!r}")
        g = sum(mix[k] / mix["total"] * f for k, f in factor.items())
        put(dict(kind="subnational", code=code, alpha2="", name=f"{prov.title()}, Canada", country="CAN",
                 g=round(g, 3), year=2023, source="canada2023"))
    # 2d. Nordic bidding zones (Electricity Maps style codes SE-SE1 ... NO-NO5).
    with open(os.path.join(data, "nordic_emissions.json"), encoding="utf-8") as f:
        nordic = json.load(f)["data"]
    for zone, v in sorted(nordic.items()):
        if len(zone) < 3:
            continue  # FI is a whole country: the country table covers it
        a2 = zone[:2]
        a3 = next((k for k, x in a3_to_a2.items() if x == a2), "")
        put(dict(kind="subnational", code=f"{a2}-{zone}", alpha2="", name=v["description"], country=a3,
                 g=float(v["emission_factor"]), year=int(v["year"]), source="nordic"))

    # 3. Cloud regions.
    cc_gcp = {r["region"].strip(): r for r in csv_rows(os.path.join(data, "cloud-region-intensity.csv"))}
    for r in csv_rows(os.path.join(data, "gcp-region-carbon-2024.csv")):
        region = r["Google Cloud Region"].strip()
        country = cc_gcp.get(region, {}).get("countryIsoCode", "") or name_to_a3.get(r["Location"].strip().lower(), "")
        put(dict(kind="cloud", code=f"gcp:{region}", alpha2="", name=r["Location"].strip(), country=country,
                 g=float(r["Grid carbon intensity (gCO2eq / kWh)"]), year=2024, source="google2024"))
    for region, r in sorted(cc_gcp.items()):
        if region == "me-cenrtal1":
            region = "me-central1"  # misspelled upstream
        put(dict(kind="cloud", code=f"gcp:{region}", alpha2="", name=r["city"].strip() or r["country_name"],
                 country=r["countryIsoCode"], g=float(r["impact"]), year=2023, source="google2023"))
    mlco2 = csv_rows(os.path.join(data, "cloud-region-intensity-mlco2.csv"))
    mlco2_country = {(r["provider"], r["region"].strip()): r["country"].strip() for r in mlco2}

    def tonnes_per_kwh(text, where):
        text = text.strip()
        if re.fullmatch(r"000\d+", text):
            # Upstream defect (azure Finland Central / Germany West Central): "000077" for 0.000077.
            print(f"note: {where}: repairing {text!r} as 0.{text}", file=sys.stderr)
            text = "0." + text
        return float(text)

    for provider in ("aws", "azure"):
        for r in csv_rows(os.path.join(data, f"ccf-grid-emissions-factors-{provider}.csv")):
            raw = r["Region"].strip()
            region = raw if provider == "aws" else raw.lower().replace(" ", "")
            place = (r.get("Country") or r.get("Location") or "").strip()
            cname = mlco2_country.get((provider, region)) or place
            g = tonnes_per_kwh(r["CO2e (metric ton/kWh)"], f"ccf-grid-emissions-factors-{provider}.csv {raw}") * 1e6
            put(dict(kind="cloud", code=f"{provider}:{region}", alpha2="", name=f"{raw} ({place})",
                     country=name_to_a3.get(cname.lower(), ""), g=round(g, 3), year=None,
                     source=f"ccf-{provider}"), prefer_newer=False)
    for r in mlco2:
        region = r["region"].strip()
        if not region:
            continue
        put(dict(kind="cloud", code=f'{r["provider"]}:{region}', alpha2="", name=r["city"].strip() or r["country"],
                 country=name_to_a3.get(r["country"].strip().lower(), ""), g=float(r["impact"]), year=None,
                 source="mlco2"), prefer_newer=False)

    # 4. World average.
    put(dict(kind="world", code="WORLD", alpha2="", name="World average", country="",
             g=float(per_source["world_average"]), year=2019, source="world"))

    os.makedirs(args.out, exist_ok=True)
    order = {"country": 0, "subnational": 1, "cloud": 2, "world": 3}
    with open(os.path.join(args.out, "grid-intensity.csv"), "w", encoding="utf-8", newline="") as f:
        f.write("# Grid carbon intensity (gCO2e/kWh) by location. Generated by scripts/build-carbon-tables.py;\n"
                "# do not edit. Sources and licences: grid-intensity-sources.csv, docs/data-sources.md, NOTICE.\n")
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["kind", "code", "alpha2", "name", "country", "g_per_kwh", "year", "source"])
        for row in sorted(rows.values(), key=lambda r: (order[r["kind"]], r["code"])):
            w.writerow([row["kind"], row["code"], row["alpha2"], row["name"], row["country"],
                        f'{row["g"]:g}', row["year"] if row["year"] else "", row["source"]])
    with open(os.path.join(args.out, "grid-intensity-sources.csv"), "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["id", "title", "licence", "origin"])
        for sid, (title, lic, origin) in SOURCES.items():
            w.writerow([sid, title, lic, origin])
    pue_rows = csv_rows(os.path.join(data, "pue-defaults.csv"), skip_lines=1)
    with open(os.path.join(args.out, "pue.csv"), "w", encoding="utf-8", newline="") as f:
        f.write("# PUE by provider, from Green Algorithms defaults_PUE.csv @28c9d8f (CC BY 4.0,\n"
                "# Lannelongue et al., Adv. Sci. 2021). Generated by scripts/build-carbon-tables.py.\n")
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["provider", "pue", "source"])
        for r in pue_rows:
            w.writerow([r["provider"].strip().lower(), r["PUE"].strip(), r["source"].strip()])
    counts = {}
    for r in rows.values():
        counts[r["kind"]] = counts.get(r["kind"], 0) + 1
    print(f"wrote {len(rows)} locations {counts} to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
