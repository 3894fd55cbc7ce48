#!/usr/bin/env cwl-runner
cwlVersion: v1.0
class: CommandLineTool
id: cryoflow_ctf
label: "cryoflow ctf: CTF estimation and micrograph quality metrics"
doc: |
  Fits defocus U/V and astigmatism angle to every micrograph's power spectrum and measures
  quality metrics (fit resolution, figure of merit, ice ring, ring anisotropy from drift,
  dark/bright area fractions, specimen tilt). Writes micrographs_ctf.star (RELION 3.1+),
  micrographs_ctf_failed.star (no fit possible, with the reason), diagnostics and a report.
  Takes a folder of micrographs, or a batch of them: a STAR file from `cryoflow split` (its
  names are <folder name>/<path inside>) with the folder as images, which is staged in the
  working directory under its own name so the names resolve; `cryoflow merge` joins the
  batches' folders.
$namespaces:
  sbg: https://www.sevenbridges.com/
  edam: http://edamontology.org/
requirements:
  InitialWorkDirRequirement:
    listing:
      - $(inputs.images)
hints:
  DockerRequirement:
    dockerPull: cryoflow:cpu
  ResourceRequirement:
    coresMin: 2
    ramMin: 4096
baseCommand: [cryoflow, ctf]
arguments:
  - {prefix: --out, valueFrom: $(inputs.out_name)}
inputs:
  micrographs:
    type: Directory?
    label: Micrographs
    doc: Folder of motion-corrected micrographs (MRC), searched recursively (EPU layout understood). Give this, or batch and images.
    inputBinding: {position: 1}
  batch:
    type: File?
    label: Micrograph batch (STAR)
    doc: A micrographs STAR file of cryoflow split naming micrographs as <folder name>/<path inside> (the images folder's name).
    inputBinding: {position: 1}
  images:
    type: Directory?
    label: Micrograph folder (for batch)
    doc: The folder of micrographs the batch names, staged in the working directory under its own name.
  pixel_size:
    type: float?
    label: Pixel size (Å)
    doc: Pixel size in Å; default from the MRC headers.
    inputBinding: {prefix: --pixel-size}
  voltage:
    type: float
    default: 300.0
    label: Voltage (kV)
    doc: Acceleration voltage in kV.
    inputBinding: {prefix: --voltage}
  cs:
    type: float
    default: 2.7
    label: Spherical aberration (mm)
    doc: Spherical aberration Cs in mm.
    inputBinding: {prefix: --cs}
  amplitude_contrast:
    type: float
    default: 0.1
    label: Amplitude contrast
    doc: Amplitude contrast as a fraction (0.07-0.1 for cryo samples).
    inputBinding: {prefix: --amplitude-contrast}
  device:
    type: string
    default: auto
    label: Device
    doc: Where torch runs, auto, cpu or cuda.
    inputBinding: {prefix: --device}
  out_name:
    type: string
    default: ctf
    label: Output folder name
    doc: Name of the step's output folder in the working directory.
outputs:
  out_dir:
    type: Directory
    label: CTF step folder
    doc: micrographs_ctf.star, diagnostics/, report.html, summary.json.
    outputBinding: {glob: $(inputs.out_name)}
  micrographs_ctf:
    type: File
    label: Micrographs with CTF (STAR)
    doc: RELION 3.1+ micrographs_ctf.star.
    outputBinding: {glob: $(inputs.out_name)/micrographs_ctf.star}
  summary:
    type: File
    label: Summary
    doc: summary.json with the step's key figures.
    outputBinding: {glob: $(inputs.out_name)/summary.json}
