#!/usr/bin/env cwl-runner
cwlVersion: v1.0
class: CommandLineTool
id: cryoflow_merge
label: "cryoflow merge: batches' step folders joined"
doc: |
  Joins the step folders of a step scattered over batches of micrographs (ctf, pick or extract
  step folders, ordered by name: batch_001, batch_002, ...) into one folder laid out as the
  step writes it for the whole set. ctf: micrographs_ctf.star (+ micrographs_ctf_failed.star)
  under one optics table with the dataset-relative ice thickness recomputed over every
  micrograph, diagnostics/. pick (batches picked with one parameter search's decisions):
  coordinates.star and coordinates/, the search's picker_state.pt and its report under
  search/. extract (one box for all batches): particles.star under one optics table with image
  names relative to the merged folder, Particles/*.mrcs, particles.cs made over all particles
  (seed as extract's). Always summary.json and report.html over the whole set and each batch's
  own report under batches/.
$namespaces:
  sbg: https://www.sevenbridges.com/
  edam: http://edamontology.org/
hints:
  DockerRequirement:
    dockerPull: cryoflow:cpu
  ResourceRequirement:
    coresMin: 1
    ramMin: 1024
baseCommand: [cryoflow, merge]
arguments:
  - {prefix: --out, valueFrom: $(inputs.out_name)}
inputs:
  folders:
    type: Directory[]
    label: Step folders of the batches
    doc: The folders the batches' jobs wrote (one step, e.g. ctf), named so that their order is the batches' order.
    inputBinding: {position: 1}
  search:
    type: Directory?
    label: Parameter search (pick)
    doc: For pick batches, the pick folder of the parameter search they were picked with (pick's parameters input); its report and evidence go to search/.
    inputBinding: {prefix: --search}
  seed:
    type: int?
    label: Seed (extract)
    doc: For extract batches, the seed of the cryoSPARC particle uids (as extract's seed, default 0); particles.cs is made over all particles with it.
    inputBinding: {prefix: --seed}
  out_name:
    type: string
    default: ctf
    label: Output folder name
    doc: Name of the merged step folder in the working directory (the step's own name, ctf, pick or extract).
outputs:
  out_dir:
    type: Directory
    label: Merged step folder
    doc: The step's folder over the whole set (for ctf, micrographs_ctf.star, diagnostics/; pick, coordinates.star, coordinates/, search/; extract, particles.star, Particles/, particles.cs), batches/, report.html, summary.json.
    outputBinding: {glob: $(inputs.out_name)}
  micrographs_ctf:
    type: File?
    label: Micrographs with CTF (STAR)
    doc: ctf, micrographs_ctf.star over the whole set.
    outputBinding: {glob: $(inputs.out_name)/micrographs_ctf.star}
  coordinates:
    type: File?
    label: Coordinate index (STAR)
    doc: pick, coordinates.star (block coordinate_files); the files it names lie in out_dir, relative to it.
    outputBinding: {glob: $(inputs.out_name)/coordinates.star}
  particles:
    type: File?
    label: Particles (STAR)
    doc: extract, particles.star (rlnImageName N@Particles/<micrograph>.mrcs, relative to out_dir).
    outputBinding: {glob: $(inputs.out_name)/particles.star}
  particles_cs:
    type: File?
    label: Particles (cryoSPARC .cs)
    doc: extract, particles.cs over all particles (blob paths relative to out_dir).
    outputBinding: {glob: $(inputs.out_name)/particles.cs}
  report:
    type: File
    label: Report
    doc: report.html over the whole set, listing the batches' own reports.
    format: edam:format_2331
    outputBinding: {glob: $(inputs.out_name)/report.html}
  summary:
    type: File
    label: Summary
    doc: summary.json with the step's figures over the whole set and the batches it was merged from.
    format: edam:format_3464
    outputBinding: {glob: $(inputs.out_name)/summary.json}
